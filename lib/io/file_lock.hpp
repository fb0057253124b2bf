#pragma once
// An advisory lock on an output that a run keeps writing (train's MODEL and MODEL.train):
// flock(2) on PATH.lock, held while the object lives. A second run that asks for the
// same lock is refused at once with one line naming the file and the holder's PID. The
// kernel drops a flock when its process dies, so a lock file left by a killed run
// (SIGKILL, power loss) does not block the next one.
#include <string>

namespace vmoe {

class FileLock {
 public:
  // Locks `path + ".lock"`; throws vmoe::Error if another process holds it.
  explicit FileLock(const std::string& path);
  ~FileLock();  // removes the lock file, then releases the lock
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  std::string lock_path_;
  int fd_ = -1;
};

}  // namespace vmoe
