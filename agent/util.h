/* util: tiny helpers shared by every mode (EINTR-safe I/O, std fd hygiene, last-resort
 * diagnostics). Must never allocate: child.c calls these between clone and execve. */
#ifndef LINX_UTIL_H
#define LINX_UTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Marks every function the child runs between clone and execve. On the vfork path
 * (spawn.c) the child shares the agent's memory while the agent is suspended in clone,
 * ASan's shadow and its per-thread state (reached through the shared TLS) included.
 * Instrumented, the child would leave shadow poisoned for frames that never return (it
 * ends in execve or _exit: the CLONE_VM hazard of google/sanitizers#37), take frames from
 * the agent's fake stack (detect_stack_use_after_return), and call
 * __asan_handle_no_return before every call that does not return, with a stack pointer
 * outside the agent's known stack; measured: a "WARNING: ASan is ignoring requested
 * __asan_handle_no_return" on stderr at every spawn (google/sanitizers#189). So the
 * child's code is not instrumented; the libc calls it makes still pass through ASan's
 * interceptors, which only read the shadow. No effect without ASan. */
#define CHILD_CODE __attribute__((no_sanitize("address")))

/* 1 in sanitizer builds (make SAN=1). They free what an agent inherits from the launcher
 * and leave through exit(), so LeakSanitizer checks a clean heap. Plain builds leave both
 * to the kernel: an agent shares the launcher's heap and data copy-on-write, and freeing
 * the launcher's buffers or running exit handlers there only copies pages (four page
 * faults an agent, measured; docs/performance.md). */
#if defined(__SANITIZE_ADDRESS__)
#define LINX_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LINX_SANITIZED 1
#endif
#endif
#ifndef LINX_SANITIZED
#define LINX_SANITIZED 0
#endif

/* A failed step: what was being done (a stage name from docs/protocol.md) and errno. */
struct fail {
	const char *stage;
	int err;
};

static inline int fail_set(struct fail *f, const char *stage, int err)
{
	f->stage = stage;
	f->err = err;
	return -1;
}

/* Writes all of buf, waiting out EAGAIN; returns 0 or an errno. Callers that write to a
 * socket or pipe whose reader may be gone ignore SIGPIPE, so that is EPIPE. */
int write_all(int fd, const void *buf, size_t len);

/* Opens path for writing and writes data in one write(2), as the /proc id files
 * (uid_map, gid_map, setgroups) require; returns 0 or an errno (EIO for a short write). */
int write_file_once(const char *path, const void *data, size_t len);

/* Reads up to len bytes, retrying EINTR; returns bytes read, 0 at EOF, or -errno. */
ssize_t read_some(int fd, void *buf, size_t len);

/* Opens /dev/null on any of fds 0/1/2 that is closed, so no descriptor we create later can
 * land there and be clobbered by the workload's stdio. Returns 0 or an errno. */
int ensure_std_fds(void);

/* For failures with no one to report to (Python gone, launcher plumbing): one line on
 * stderr naming the stage and errno. Not for the child: strerror is not async-signal-safe. */
void diag(const char *stage, int err);

/* Every signal's disposition back to SIG_DFL, including the two glibc reserves for itself
 * (32 and 33), which libc's sigaction refuses but posix_spawn leaves ignored in the
 * programs it starts. Done once when linx-agent starts, so that what a child has to undo
 * before execve is only what we set ourselves (AGENT_IGNORED_SIGNALS). Returns 0 or an
 * errno. */
int reset_all_signals(void);

/* The signals the launcher and agents ignore; the child restores exactly these. What a
 * terminal sends its foreground process group (Ctrl-C, Ctrl-\, Ctrl-Z, the stops of a
 * background job, the hang-up) and a supervisor sends every process of a service
 * (SIGTERM) is for the Python program and the workloads: killed or stopped, we would take
 * every session with us, a dead agent's workload SIGKILLed at once. Our lives follow the
 * control channel instead (orphan policy); SIGKILL still ends us. SIGPIPE must be an
 * EPIPE. */
#define AGENT_IGNORED_SIGNALS                                                                   \
	{ SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU, SIGPIPE }

/* Sets AGENT_IGNORED_SIGNALS to SIG_IGN. Returns 0 or an errno. */
int ignore_agent_signals(void);

/* One signal's disposition to SIG_DFL by the raw syscall (no libc bookkeeping). */
int default_signal(int signum);

/* Closes every fd from `first` up, or with `cloexec` marks them close-on-exec:
 * close_range(2), or fd by fd as /proc/self/fd lists them where the kernel refuses it
 * (ENOSYS before Linux 5.9, EINVAL for CLOSE_RANGE_CLOEXEC before 5.11, EPERM from a
 * container runtime's seccomp profile older than the call). Returns 0 or an errno. */
int close_fds_from(unsigned int first, int cloexec);

/* 0 if fd is a stream socket, what every channel is (docs/protocol.md); else ENOTSOCK,
 * EPROTOTYPE, or getsockopt's errno. A datagram socket never reads EOF, so a program on
 * one would outlive its peer. */
int stream_socket_err(int fd);

/* /dev/null on fd 2, for a process that outlives the Python program whose stderr that
 * was (often a pipe whose reader waits for EOF). */
void let_go_of_stderr(void);

/* Closes fd if >= 0, keeping errno intact, and sets it to -1. */
void close_fd(int *fd);

#endif
