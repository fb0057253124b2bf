#pragma once
// Opening the files we read (models, training states, images, IDX files, result JSON)
// so that nothing blocks and nothing but a regular file is read: the type is checked
// with stat() before opening, the open itself never waits (O_NONBLOCK: a FIFO swapped in
// between cannot hang us), and fstat() checks the opened file again. FIFOs, devices,
// sockets and directories are refused with one line naming the file and what it is.
#include <cstddef>
#include <cstdint>
#include <string>

namespace vmoe {

// A read-only descriptor (blocking mode restored) of the regular file at `path`;
// `what` names its role in messages ("model", "image"). The caller closes it.
int open_input_file(const std::string& path, const char* what);

// The whole file, refusing files larger than `max_bytes`.
std::string read_input_file(const std::string& path, const char* what, uint64_t max_bytes);

// Throws unless `path` is absent or a regular file (following no symlink): the check
// made before anything is written to it (io/atomic_file). `what` names its role.
void check_output_path(const std::string& path, const char* what);

// "a FIFO", "a directory", ... for messages.
const char* file_type_name(unsigned mode);

}  // namespace vmoe
