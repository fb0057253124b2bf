#include "io/file_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace vmoe {

namespace {

// The PID the holder wrote into the lock file ("" if unreadable).
std::string holder_of(int fd) {
  char text[32] = {};
  const ssize_t n = ::pread(fd, text, sizeof(text) - 1, 0);
  if (n <= 0) return "";
  std::string pid(text, static_cast<size_t>(n));
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid.find_first_not_of("0123456789") == std::string::npos ? pid : "";
}

}  // namespace

// Holders unlink the lock file when they finish, so a file we opened may already be
// unlinked (or replaced) by the time our flock succeeds: then we hold a lock nobody else
// can see, and must retry on the name's current file. Only a lock on the file that
// still has the name counts.
FileLock::FileLock(const std::string& path) : lock_path_(path + ".lock") {
  for (int attempt = 0; attempt < 64; ++attempt) {
    const int fd = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) fail("cannot open the lock file {}: {}", lock_path_, std::strerror(errno));
    struct stat mine {};
    if (::fstat(fd, &mine) != 0 || !S_ISREG(mine.st_mode)) {
      ::close(fd);
      fail("the lock file {} is not a regular file", lock_path_);
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = holder_of(fd);
      ::close(fd);
      if (err == EWOULDBLOCK)
        fail("{} is in use by another vmoe run{} (it holds {}); wait for it to finish or write elsewhere", path,
             holder.empty() ? "" : " (PID " + holder + ")", lock_path_);
      fail("cannot lock {}: {}", lock_path_, std::strerror(err));
    }
    struct stat named {};
    if (::stat(lock_path_.c_str(), &named) == 0 && named.st_dev == mine.st_dev && named.st_ino == mine.st_ino) {
      const std::string pid = std::to_string(::getpid()) + "\n";
      if (::ftruncate(fd, 0) == 0 && ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
        // the PID is only for the message of a refused run
      }
      fd_ = fd;
      return;
    }
    ::close(fd);
  }
  fail("cannot lock {}: it keeps being replaced", lock_path_);
}

FileLock::~FileLock() {
  if (fd_ < 0) return;
  ::unlink(lock_path_.c_str());  // while still holding it: a waiting opener then retries on a new file
  ::close(fd_);
}

}  // namespace vmoe
