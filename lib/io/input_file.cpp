#include "io/input_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.hpp"

namespace vmoe {

const char* file_type_name(unsigned mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

int open_input_file(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open {} ({})", path, what, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: the {} is {}, expected a regular file", path, what, file_type_name(st.st_mode));
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) fail("{}: cannot open {} ({})", path, what, std::strerror(errno));
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const unsigned mode = st.st_mode;
    ::close(fd);
    fail("{}: the {} is {}, expected a regular file", path, what, file_type_name(mode));
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string read_input_file(const std::string& path, const char* what, uint64_t max_bytes) {
  const int fd = open_input_file(path, what);
  struct stat st {};
  ::fstat(fd, &st);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    fail("{}: the {} is {} bytes, more than the {}-byte limit", path, what, st.st_size, max_bytes);
  }
  std::string out;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      fail("{}: cannot read {} ({})", path, what, std::strerror(err));
    }
    if (got == 0) break;
    out.append(buffer, static_cast<size_t>(got));
    if (out.size() > max_bytes) {  // it grew while we read
      ::close(fd);
      fail("{}: the {} is more than the {}-byte limit", path, what, max_bytes);
    }
  }
  ::close(fd);
  return out;
}

void check_output_path(const std::string& path, const char* what) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    fail("{}: cannot write {} ({})", path, what, std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode))
    fail("{}: refusing to write the {} over {} (only a regular file or a new name is replaced)", path, what,
         file_type_name(st.st_mode));
}

}  // namespace vmoe
