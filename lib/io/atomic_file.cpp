#include "io/atomic_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "io/input_file.hpp"

namespace vmoe {

namespace {

// The temporary files being written, in fixed storage a signal handler may read.
struct TempSlot {
  std::atomic<bool> used{false};
  std::atomic<bool> live{false};
  char path[4096] = {};
};
TempSlot g_temp_slots[16];

TempSlot* register_temp(const std::string& path) {
  if (path.size() >= sizeof(TempSlot::path)) return nullptr;
  for (TempSlot& s : g_temp_slots) {
    bool expected = false;
    if (!s.used.compare_exchange_strong(expected, true)) continue;
    std::memcpy(s.path, path.c_str(), path.size() + 1);
    s.live.store(true);
    return &s;
  }
  return nullptr;  // more than 16 files at once: still written, just not cleaned by signals
}

void unregister_temp(TempSlot* s) {
  if (!s) return;
  s->live.store(false);
  s->used.store(false);
}

bool process_is_gone(long pid) {
  if (pid <= 0 || pid > 0x7fffffff) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

void remove_temp_files_now() {
  for (TempSlot& s : g_temp_slots)
    if (s.live.load()) ::unlink(s.path);
}

int remove_stale_temp_files(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const std::string prefix = target.filename().string() + ".tmp.";
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 10 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code type_ec;
    if (!fs::is_regular_file(fs::symlink_status(it->path(), type_ec))) continue;
    if (process_is_gone(std::stol(digits)) && ::unlink(it->path().c_str()) == 0) ++removed;
  }
  return removed;
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write) {
  check_output_path(path, "output");
  remove_stale_temp_files(path);
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  // Our own name: exclusive, never through a symlink someone planted there.
  ::unlink(temp.c_str());
  TempSlot* slot = register_temp(temp);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    unregister_temp(slot);
    fail("cannot write {}: {}", temp, std::strerror(err));
  }
  ::close(fd);
  try {
    {
      std::ofstream out(temp, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot write {}: {}", temp, std::strerror(errno));
      write(out);
      out.flush();
      if (!out) fail("error writing {}: {}", temp, std::strerror(errno));
    }
    int sync_fd = ::open(temp.c_str(), O_RDONLY | O_CLOEXEC);
    if (sync_fd < 0 || ::fsync(sync_fd) != 0) {
      if (sync_fd >= 0) ::close(sync_fd);
      fail("cannot sync {}: {}", temp, std::strerror(errno));
    }
    ::close(sync_fd);
    check_output_path(path, "output");  // again: it may have been swapped while we wrote
    if (std::rename(temp.c_str(), path.c_str()) != 0) fail("cannot rename {} to {}: {}", temp, path, std::strerror(errno));
  } catch (...) {
    ::unlink(temp.c_str());
    unregister_temp(slot);
    throw;
  }
  unregister_temp(slot);
}

}  // namespace vmoe
