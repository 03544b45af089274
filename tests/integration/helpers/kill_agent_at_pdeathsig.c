/* Test helper: runs linx-agent ($LINX_REAL_AGENT) under a seccomp filter that hands every
 * prctl(PR_SET_PDEATHSIG) to a supervisor (SECCOMP_RET_USER_NOTIF); nothing else is
 * touched. Only a workload's child calls it (the launcher and the agents never do), right
 * after clone: the supervisor SIGKILLs that child's parent, the agent, waits until it has
 * exited (so the child has a new parent), and only then lets the prctl through. The agent
 * has died between clone and PR_SET_PDEATHSIG: the death signal armed now never comes.
 *
 * The child's other ways to notice stay quiet, so that only its parent check can tell: the
 * supervisor opens a reader on each pipe the child writes (the report pipe: no POLLERR)
 * and a writer on each it reads, with one byte in it (the release pipe, fork-style path:
 * the checkpoint goes on). The spawn under test must use stdio "devnull", so that the
 * child's pipes above fd 2 are those two.
 *
 * One-shot: the supervisor handles the first notification whose parent is not the
 * launcher, waits for that child to exit (or for 20 s), and exits; a later
 * PR_SET_PDEATHSIG would fail with ENOSYS. It writes "<child> <agent> <new parent>
 * <supervisor>\n" to $LINX_PDEATHSIG_RECORD before it lets the prctl through, or
 * "error <what> <errno>\n" if it cannot. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "seccomp_filter.h"

#define MAX_HELD 16

extern char **environ;

static const char *record_path;

static void record(const char *line)
{
	int fd = open(record_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		return;
	if (write(fd, line, strlen(line)) < 0) {
		/* nothing to tell it to: the test sees no record */
	}
	close(fd);
}

static _Noreturn void fail(const char *what, int err)
{
	char line[128];

	snprintf(line, sizeof(line), "error %s %d\n", what, err);
	record(line);
	_exit(1);
}

/* The PPid: line of /proc/<pid>/status, or -1. */
static pid_t parent_of(pid_t pid)
{
	char path[64], buf[4096];

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	const char *line = strstr(buf, "\nPPid:");
	return line ? (pid_t)strtol(line + 6, NULL, 10) : -1;
}

/* The access mode of the child's fd (from fdinfo's octal flags), or -1. */
static int access_mode(pid_t pid, int fd)
{
	char path[64], buf[512];

	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", (int)pid, fd);
	int f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return -1;
	ssize_t n = read(f, buf, sizeof(buf) - 1);
	close(f);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	const char *flags = strstr(buf, "flags:");
	return flags ? (int)(strtol(flags + 6, NULL, 8) & O_ACCMODE) : -1;
}

/* A reader on every pipe the child writes, a writer with one byte in it on every pipe it
 * reads (fds above 2): what the agent would hold if it were alive. */
static void hold_pipes(pid_t child, int *held, int *nheld)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)child);
	DIR *dir = opendir(path);
	if (!dir)
		fail("opendir", errno);
	struct dirent *e;
	while ((e = readdir(dir)) && *nheld < MAX_HELD) {
		char link[64], target[64];
		int nr = atoi(e->d_name);	/* "." and ".." are 0 */
		if (nr < 3)
			continue;
		snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int)child, nr);
		ssize_t n = readlink(link, target, sizeof(target) - 1);
		if (n < 0 || (target[n] = '\0', strncmp(target, "pipe:", 5) != 0))
			continue;
		int mode = access_mode(child, nr);
		if (mode != O_WRONLY && mode != O_RDONLY)
			continue;
		/* opening /proc/<pid>/fd/<n> of a pipe opens that pipe anew, like a FIFO */
		int flags = (mode == O_WRONLY ? O_RDONLY : O_WRONLY) | O_NONBLOCK | O_CLOEXEC;
		int fd = open(link, flags);
		if (fd < 0)
			fail("open_pipe", errno);
		if (mode == O_RDONLY && write(fd, "g", 1) != 1)
			fail("write_release", errno);
		held[(*nheld)++] = fd;
	}
	closedir(dir);
}

/* Kills the notifying child's agent and waits until it has exited: 0, or -1 if this child
 * is not one to handle (its parent is the launcher). */
static int kill_parent(const struct seccomp_notif *req, int listener, pid_t launcher,
		       int *child_pidfd, int *held, int *nheld)
{
	pid_t child = (pid_t)req->pid;
	pid_t agent = parent_of(child);
	char line[128];

	if (agent <= 1 || agent == launcher)
		return -1;
	int agent_pidfd = (int)syscall(SYS_pidfd_open, agent, 0);
	*child_pidfd = (int)syscall(SYS_pidfd_open, child, 0);
	if (agent_pidfd < 0 || *child_pidfd < 0)
		fail("pidfd_open", errno);
	/* both pidfds are of the processes read about above: the child is still in its prctl */
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) < 0)
		fail("id_valid", errno);
	hold_pipes(child, held, nheld);
	if (syscall(SYS_pidfd_send_signal, agent_pidfd, SIGKILL, NULL, 0) < 0)
		fail("kill", errno);
	/* readable once it has exited, when its children have their new parent already */
	struct pollfd p = { .fd = agent_pidfd, .events = POLLIN };
	int ready = poll(&p, 1, 20000);
	if (ready != 1)
		fail("agent_exit", ready < 0 ? errno : ETIMEDOUT);
	close(agent_pidfd);
	pid_t now = parent_of(child);
	snprintf(line, sizeof(line), "%d %d %d %d\n", (int)child, (int)agent, (int)now,
		 (int)getpid());
	record(line);
	return 0;
}

static _Noreturn void supervise(int listener, pid_t launcher)
{
	struct seccomp_notif_sizes sizes;
	int child_pidfd = -1, held[MAX_HELD], nheld = 0;

	/* no fd of the launcher's (its channel to Python, Python's stderr) stays open here */
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null < 0)
		fail("devnull", errno);
	for (int t = 0; t < 3; t++)
		if (dup2(null, t) < 0)
			fail("dup2", errno);
	if (dup2(listener, 3) < 0)
		fail("dup2", errno);
	listener = 3;
	close_range(4, ~0U, 0);
	alarm(60);	/* never outlives a test that went wrong */

	if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0)
		fail("notif_sizes", errno);
	struct seccomp_notif *req = calloc(1, sizes.seccomp_notif);
	struct seccomp_notif_resp *resp = calloc(1, sizes.seccomp_notif_resp);
	if (!req || !resp)
		fail("calloc", ENOMEM);
	for (;;) {
		memset(req, 0, sizes.seccomp_notif);
		if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) < 0) {
			if (errno == EINTR || errno == ENOENT)
				continue;
			fail("notif_recv", errno);
		}
		int handled = req->data.args[1] == SIGKILL &&
			      kill_parent(req, listener, launcher, &child_pidfd, held, &nheld) == 0;
		memset(resp, 0, sizes.seccomp_notif_resp);
		resp->id = req->id;
		resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
		if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp) < 0 && errno != ENOENT)
			fail("notif_send", errno);
		if (handled)
			break;
	}
	/* the pipes stay held until the child is done with them: exited, or exec'd and ended */
	struct pollfd p = { .fd = child_pidfd, .events = POLLIN };
	poll(&p, 1, 20000);
	_exit(0);
}

int main(int argc, char **argv)
{
	const char *agent = getenv("LINX_REAL_AGENT");
	struct sock_filter filter[] = {
		LOAD_NATIVE_SYSCALL_NR,
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 0, 3),
		/* prctl's option is an int: the low half of args[0] (both targets are LE) */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_PDEATHSIG, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog program = { sizeof(filter) / sizeof(filter[0]), filter };

	(void)argc;
	record_path = getenv("LINX_PDEATHSIG_RECORD");
	if (!agent || !record_path) {
		fputs("kill_agent_at_pdeathsig: set LINX_REAL_AGENT and LINX_PDEATHSIG_RECORD\n",
		      stderr);
		return 2;
	}
	int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
				    SECCOMP_FILTER_FLAG_NEW_LISTENER, &program);
	if (listener < 0) {
		perror("kill_agent_at_pdeathsig: seccomp");
		return 1;
	}
	/* the launcher keeps this pid through execve */
	pid_t launcher = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		perror("kill_agent_at_pdeathsig: fork");
		return 1;
	}
	if (pid == 0)
		supervise(listener, launcher);
	close(listener);
	execve(agent, argv, environ);
	perror("kill_agent_at_pdeathsig: execve");
	return 1;
}
