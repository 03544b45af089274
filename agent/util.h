/* util: tiny helpers shared by every mode (EINTR-safe I/O, std fd hygiene, last-resort
 * diagnostics). Must never allocate: child.c calls these between clone and execve. */
#ifndef LINX_UTIL_H
#define LINX_UTIL_H

#include <stddef.h>
#include <sys/types.h>

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

/* Writes all of buf; returns 0 or an errno. */
int write_all(int fd, const void *buf, size_t len);

/* Reads up to len bytes, retrying EINTR; returns bytes read, 0 at EOF, or -errno. */
ssize_t read_some(int fd, void *buf, size_t len);

/* Opens /dev/null on any of fds 0/1/2 that is closed, so no descriptor we create later can
 * land there and be clobbered by the workload's stdio. Returns 0 or an errno. */
int ensure_std_fds(void);

/* For failures with no one to report to (Python gone, launcher plumbing): one line on
 * stderr naming the stage and errno. Not for the child: strerror is not async-signal-safe. */
void diag(const char *stage, int err);

/* Closes fd if >= 0, keeping errno intact, and sets it to -1. */
void close_fd(int *fd);

#endif
