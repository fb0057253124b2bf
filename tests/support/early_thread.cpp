// A test-only library, LD_PRELOADed into vmoe by tests/cli/test_signals.sh:
//
// - Its constructor starts a thread with every signal unblocked before main runs, as
//   OpenBLAS's thread pool does when OpenCV loads it (issue 24, D9): a process-directed
//   SIGINT may then be delivered to this thread, which never saw vmoe's signal mask.
// - With VMOE_TEST_SLOW_FSYNC_MS=N in the environment, every fsync() first sleeps N ms,
//   so a test can reliably kill vmoe while a file is being written (a NAME.tmp.PID exists).
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>

namespace {

void* idle(void*) {
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);
  for (;;) ::pause();
  return nullptr;
}

__attribute__((constructor)) void start_early_thread() {
  pthread_t thread;
  if (pthread_create(&thread, nullptr, idle, nullptr) == 0) pthread_detach(thread);
}

}  // namespace

extern "C" int fsync(int fd) {
  using Fsync = int (*)(int);
  static const Fsync real = reinterpret_cast<Fsync>(dlsym(RTLD_NEXT, "fsync"));
  if (const char* ms = std::getenv("VMOE_TEST_SLOW_FSYNC_MS")) {
    const long n = std::atol(ms);
    timespec t{n / 1000, (n % 1000) * 1000000};
    while (nanosleep(&t, &t) != 0) {
    }
  }
  return real(fd);
}
