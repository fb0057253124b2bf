#pragma once
// Files the tool writes appear whole or not at all: write to a temporary name in the
// same directory (NAME.tmp.PID), fsync, then rename over the target.
//
// - Only a regular file or a new name is replaced: a symlink, FIFO, device or directory
//   at the target is refused before anything is written (io/input_file).
// - Temporary files being written are registered, so a signal handler can remove them
//   (remove_temp_files_now), and NAME.tmp.PID files left by processes that no longer
//   exist (killed with SIGKILL, power loss) are removed the next time NAME is written.
#include <functional>
#include <ostream>
#include <string>

namespace vmoe {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write);

// Unlinks every temporary file this process is writing right now. Async-signal-safe:
// meant for SIGINT/SIGTERM handlers, which then let the signal end the process.
void remove_temp_files_now();

// Removes NAME.tmp.PID files next to `path` whose process PID is gone; returns how many.
int remove_stale_temp_files(const std::string& path);

}  // namespace vmoe
