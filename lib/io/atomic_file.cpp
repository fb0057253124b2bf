#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.hpp"

namespace vmoe {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write) {
  std::string temp = path + ".tmp." + std::to_string(::getpid());
  try {
    {
      std::ofstream out(temp, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot write {}: {}", temp, std::strerror(errno));
      write(out);
      out.flush();
      if (!out) fail("error writing {}: {}", temp, std::strerror(errno));
    }
    int fd = ::open(temp.c_str(), O_RDONLY);
    if (fd < 0 || ::fsync(fd) != 0) {
      if (fd >= 0) ::close(fd);
      fail("cannot sync {}: {}", temp, std::strerror(errno));
    }
    ::close(fd);
    if (std::rename(temp.c_str(), path.c_str()) != 0) fail("cannot rename {} to {}: {}", temp, path, std::strerror(errno));
  } catch (...) {
    std::remove(temp.c_str());
    throw;
  }
}

}  // namespace vmoe
