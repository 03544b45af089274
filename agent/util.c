/* util: tiny helpers shared by every mode (EINTR-safe I/O, std fd hygiene, last-resort
 * diagnostics). Must never allocate: child.c calls these between clone and execve. */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <linux/close_range.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

CHILD_CODE int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EAGAIN) {
			/* a non-blocking fd: the vfork path's report pipe is one (spawn.c) */
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };
			if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
				return errno;
			continue;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

CHILD_CODE int write_file_once(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	ssize_t n = write(fd, data, len);
	int err = n < 0 ? errno : (size_t)n != len ? EIO : 0;
	close(fd);
	return err;
}

CHILD_CODE ssize_t read_some(int fd, void *buf, size_t len)
{
	for (;;) {
		ssize_t n = read(fd, buf, len);
		if (n >= 0)
			return n;
		if (errno != EINTR)
			return -errno;
	}
}

int ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		/* lowest free number is fd itself, since the ones below are open by now */
		int nfd = open("/dev/null", O_RDWR);
		if (nfd < 0)
			return errno;
		if (nfd != fd) {
			close(nfd);
			return EBADF;
		}
	}
	return 0;
}

void diag(const char *stage, int err)
{
	char line[256];
	const char *msg = strerror(err);
	size_t n = 0;
	const char *parts[] = { "linx-agent: ", stage, ": ", msg, "\n" };

	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		size_t l = strlen(parts[i]);
		if (l > sizeof(line) - n)
			l = sizeof(line) - n;
		memcpy(line + n, parts[i], l);
		n += l;
	}
	(void)!write(2, line, n);
}

/* getdents64's record (the libc has none for the raw call). */
struct dirent64_rec {
	uint64_t ino;
	int64_t off;
	unsigned short reclen;
	unsigned char type;
	char name[];
};

/* The decimal fd number an entry of /proc/self/fd is named, or -1 ("." and ".."). */
CHILD_CODE static long fd_named(const char *name)
{
	long fd = 0;

	if (*name < '0' || *name > '9')
		return -1;
	for (; *name >= '0' && *name <= '9'; name++)
		fd = fd * 10 + (*name - '0');
	return fd;
}

/* The fallback of close_fds_from: no allocation (the child runs it), so the directory is
 * read with getdents64 into a buffer on the stack. Closing an fd it listed does not
 * disturb the listing, as CPython's _posixsubprocess relies on too. */
CHILD_CODE static int close_listed_fds(unsigned int first, int cloexec)
{
	_Alignas(8) char buf[1024];
	long n;
	int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dir < 0)
		return errno;
	while ((n = syscall(SYS_getdents64, dir, buf, sizeof(buf))) > 0) {
		for (long at = 0; at < n;) {
			struct dirent64_rec *d = (struct dirent64_rec *)(void *)(buf + at);
			long fd = fd_named(d->name);
			at += d->reclen;
			if (fd < (long)first || fd == dir)
				continue;
			if (cloexec)
				(void)fcntl((int)fd, F_SETFD, FD_CLOEXEC);
			else
				(void)close((int)fd);
		}
	}
	int err = n < 0 ? errno : 0;
	close(dir);
	return err;
}

CHILD_CODE int close_fds_from(unsigned int first, int cloexec)
{
	if (close_range(first, ~0U, cloexec ? CLOSE_RANGE_CLOEXEC : 0) == 0)
		return 0;
	if (errno != ENOSYS && errno != EINVAL && errno != EPERM)
		return errno;
	return close_listed_fds(first, cloexec);
}

void close_fd(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
		*fd = -1;
	}
}

/* The kernel's struct sigaction on x86-64 and the asm-generic layout (arm64 included):
 * handler, flags, restorer, mask. No restorer is needed to install SIG_DFL. */
struct kernel_sigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	unsigned long mask;
};

CHILD_CODE int default_signal(int signum)
{
	struct kernel_sigaction dfl = { .handler = SIG_DFL };

	if (syscall(SYS_rt_sigaction, signum, &dfl, NULL, sizeof(dfl.mask)) < 0)
		return errno;
	return 0;
}

int reset_all_signals(void)
{
	for (int s = 1; s <= 64; s++) {
		if (s == SIGKILL || s == SIGSTOP)
			continue;
		int err = default_signal(s);
		if (err)
			return err;
	}
	return 0;
}

int ignore_agent_signals(void)
{
	static const int ignored[] = AGENT_IGNORED_SIGNALS;

	for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
		if (signal(ignored[i], SIG_IGN) == SIG_ERR)
			return errno;
	}
	return 0;
}

int stream_socket_err(int fd)
{
	int type;
	socklen_t len = sizeof(type);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return errno;
	return type == SOCK_STREAM ? 0 : EPROTOTYPE;
}

/* fd 2 is the stderr of the Python process that started the launcher: often a pipe that
 * its own parent reads to EOF (a shell's $(...), subprocess's capture_output). Python is
 * gone, and waiting out a grace or a linger with it open would keep that reader waiting
 * for a workload that never had the pipe. What we might still say goes nowhere: nobody
 * is left to hear it. */
void let_go_of_stderr(void)
{
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

	if (fd < 0 || dup2(fd, 2) < 0)
		diag("orphan stderr", errno);
	if (fd > 2)
		close(fd);
}
