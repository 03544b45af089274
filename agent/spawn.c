/* spawn: the agent's side of making and handling its one child: host-side stdio, pipes,
 * clone3 (or its fallback, or the vfork path), the uid/gid maps written from outside,
 * kill and reap. Must never talk to Python (agent.c does) nor run code meant for the
 * child (child.c). */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "orphans.h"

/* A connect to a listener whose backlog is full waits for room, and the agent's one thread
 * would answer neither Python nor its EOF meanwhile. For AF_UNIX a non-blocking connect
 * cannot help (it fails with EAGAIN at once: there is no EINPROGRESS to poll for), but a
 * blocking one waits at most SO_SNDTIMEO and then fails with EAGAIN. */
#define CONNECT_UNIX_TIMEOUT_S 5

static int connect_unix(const struct stdio_spec *s, int *out, struct fail *f)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval limit = { .tv_sec = CONNECT_UNIX_TIMEOUT_S }, none = { 0 };

	if (s->path_len >= sizeof(sa.sun_path))
		return fail_set(f, "connect_unix", ENAMETOOLONG);
	memcpy(sa.sun_path, s->path, s->path_len);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail_set(f, "connect_unix", errno);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + s->path_len + 1);
	int err = 0;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit)) < 0)
		err = errno;
	while (!err && connect(fd, (struct sockaddr *)&sa, len) < 0) {
		if (errno != EINTR)
			err = errno;
	}
	/* the limit was ours, for the connect: the workload's writes wait as long as they must */
	if (!err && setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none)) < 0)
		err = errno;
	if (err) {
		close(fd);
		return fail_set(f, "connect_unix", err);
	}
	*out = fd;
	return 0;
}

/* Host side of the stdio directives: connects and /dev/null are opened here, before any
 * namespace is entered (a pivoted root may have no /dev/null). owned[] gets what we
 * opened, for the caller to close once the child has its copies. */
static int prepare_stdio(const struct spawn_req *req, const int *passed,
			 struct child_plan *plan, int owned[3], struct fail *f)
{
	for (int t = 0; t < 3; t++) {
		const struct stdio_spec *s = &req->stdio[t];
		plan->stdio_src[t] = -1;
		plan->stdio_close[t] = 0;
		switch (s->kind) {
		case STDIO_FD:
			plan->stdio_src[t] = passed[s->fd_index];
			break;
		case STDIO_DEVNULL:
			owned[t] = open("/dev/null", O_RDWR | O_CLOEXEC);
			if (owned[t] < 0)
				return fail_set(f, "stdio", errno);
			plan->stdio_src[t] = owned[t];
			break;
		case STDIO_CONNECT_UNIX:
			if (connect_unix(s, &owned[t], f))
				return -1;
			plan->stdio_src[t] = owned[t];
			break;
		case STDIO_CLOSED:
			plan->stdio_close[t] = 1;
			break;
		default:
			break;
		}
	}
	return 0;
}

/* Test hook: LINX_AGENT_NO_CLONE3=1 takes the path older kernels take. */
static int clone3_disabled(void)
{
	const char *v = getenv("LINX_AGENT_NO_CLONE3");
	return v && strcmp(v, "1") == 0;
}

/* fork-like clone into the namespaces; 0 in the child, the pid in the agent (with *pidfd
 * set), -1 with errno. */
static pid_t clone_child(uint64_t ns, int *pidfd, const char **stage)
{
	*stage = "clone";
	if (!clone3_disabled()) {
		struct clone_args a;
		memset(&a, 0, sizeof(a));
		a.flags = CLONE_PIDFD | ns;
		a.pidfd = (uint64_t)(uintptr_t)pidfd;
		a.exit_signal = SIGCHLD;
		long r = syscall(SYS_clone3, &a, sizeof(a));
		/* ENOSYS: a kernel before 5.3, or a seccomp profile that does not know clone3;
		 * older profiles (Docker's before 20.10) say EPERM. A real EPERM, for namespaces
		 * we may not make, comes back from clone as well. */
		if (r >= 0 || (errno != ENOSYS && errno != EPERM))
			return (pid_t)r;
	}
	long r = syscall(SYS_clone, (unsigned long)ns | SIGCHLD, NULL, NULL, NULL, NULL);
	if (r <= 0)
		return (pid_t)r;
	/* safe from pid reuse: it is our child and not reaped */
	*pidfd = pidfd_open((pid_t)r, 0);
	if (*pidfd < 0) {
		int err = errno;
		kill((pid_t)r, SIGKILL);
		while (waitpid((pid_t)r, NULL, 0) < 0 && errno == EINTR)
			;
		*stage = "pidfd_open";
		errno = err;
		return -1;
	}
	return (pid_t)r;
}

/* Test hook: LINX_AGENT_NO_VFORK=1 keeps every spawn on the fork-style clone. */
static int vfork_disabled(void)
{
	const char *v = getenv("LINX_AGENT_NO_VFORK");
	return v && strcmp(v, "1") == 0;
}

/* Decimal digits at *p, at most UINT32_MAX; advances *p past them. */
static int parse_id(const char **p, const char *end, uint32_t *out)
{
	const char *s = *p;
	uint64_t v = 0;

	while (s < end && *s >= '0' && *s <= '9' && v <= UINT32_MAX)
		v = v * 10 + (uint64_t)(*s++ - '0');
	if (s == *p || v > UINT32_MAX)
		return 0;
	*p = s;
	*out = (uint32_t)v;
	return 1;
}

/* Whether map is the one line "inside outside 1" (as Python writes it, newline optional)
 * with outside == id. Anything else, even a map the kernel would read the same, is simply
 * left to the fork-style path. */
static int is_self_map(const char *map, size_t len, uint32_t id)
{
	const char *p = map, *end = map + len;
	uint32_t v[3];

	for (int i = 0; i < 3; i++) {
		if (i > 0 && (p == end || *p++ != ' '))
			return 0;
		if (!parse_id(&p, end, &v[i]))
			return 0;
	}
	if (p < end && *p == '\n')
		p++;
	return p == end && v[1] == id && v[2] == 1;
}

static int setgroups_denied(const struct spawn_req *req)
{
	return req->setgroups && req->setgroups_len == 4 && memcmp(req->setgroups, "deny", 4) == 0;
}

/* A uid or gid without groups: the workload must not keep the caller's supplementary
 * groups (root's 0, disk, shadow...), so they are cleared, as runc does for process.user.
 * Not when the ids stay ours (an unprivileged caller could not drop its groups, and drops
 * no privilege), nor in a new user namespace unless setgroups is "allow": "deny" is there
 * so that groups cannot be dropped, and without a gid_map there is none to set. */
static int clears_groups(const struct spawn_req *req)
{
	if (req->has_groups || !(req->has_uid || req->has_gid))
		return 0;
	if (req->namespaces & CLONE_NEWUSER)
		return req->setgroups && !setgroups_denied(req);
	return (req->has_uid && req->uid != geteuid()) || (req->has_gid && req->gid != getegid());
}

/* A new user namespace is another identity, and the caller's supplementary groups (a
 * root caller's 0, disk, shadow...) would go into it: unmapped there, but still in force on
 * the host's files, and with setgroups denied the child could not drop them. The agent has
 * no use for them after connect_unix, so it drops them before the clone where it may. An
 * unprivileged caller may not (EPERM), and its groups are no more than its own. */
static int drop_groups_for_user_ns(const struct spawn_req *req, struct fail *f)
{
	if (!(req->namespaces & CLONE_NEWUSER) || syscall(SYS_setgroups, 0, NULL) == 0)
		return 0;
	if (errno == EPERM)
		return 0;
	return fail_set(f, "drop_groups", errno);
}

/* The vfork path (docs/design.md) needs: auto_proceed, since the agent is suspended in
 * clone and cannot release a parked child; and id files the child may write itself
 * (user_namespaces(7): without privilege in the parent namespace, one line mapping its own
 * euid, and its own egid only once setgroups is denied). */
static int vfork_fits(const struct spawn_req *req)
{
	if (!req->auto_proceed || vfork_disabled())
		return 0;
	if (!req->uid_map && !req->gid_map && !req->setgroups)
		return 1;
	if (!(req->namespaces & CLONE_NEWUSER))
		return 0;
	if (req->uid_map && !is_self_map(req->uid_map, req->uid_map_len, geteuid()))
		return 0;
	if (req->gid_map && !(is_self_map(req->gid_map, req->gid_map_len, getegid()) &&
			      setgroups_denied(req)))
		return 0;
	return 1;
}

/* The vforked child's stack. Static rather than mmap'd: no syscalls on the spawn path,
 * no memory until touched, and an agent makes one child, so it is never in use twice.
 * With no guard page below it, it is sized far above what the child was measured to use
 * (under 0.5 KiB; under 3 KiB in the ASan build). Stacks grow down on every target we
 * build for. */
static _Alignas(16) unsigned char vfork_stack[64 * 1024];

/* glibc's clone() switches the child to vfork_stack: the raw syscall would run it on our
 * own stack, where its calls would overwrite the frames we return through. We sleep in
 * here until the child execs or exits. No signal handler can run in the child on our
 * memory: the agent installs none (only SIG_IGN and SIG_DFL). */
static pid_t vfork_child(struct child_plan *plan, uint64_t ns, int *pidfd)
{
	int flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD | (int)ns;

	return clone(child_vfork_entry, vfork_stack + sizeof(vfork_stack), flags, plan, pidfd);
}

int spawn_start(const struct spawn_req *req, const int *passed, int ctl_fd,
		struct child *c, struct fail *f)
{
	struct child_plan plan;
	int owned[3] = { -1, -1, -1 };
	int report[2] = { -1, -1 }, release[2] = { -1, -1 };
	int rc = -1;

	memset(&plan, 0, sizeof(plan));
	plan.req = req;
	plan.agent_pid = getpid();
	if (prepare_stdio(req, passed, &plan, owned, f))
		goto out;
	if (drop_groups_for_user_ns(req, f))
		goto out;
	plan.vforked = vfork_fits(req);
	plan.clear_groups = clears_groups(req);
	/* vforked, the agent reads the report pipe once, after the child is done with it, and
	 * must not wait for the write end's EOF (agent.c): non-blocking. The child's end is too,
	 * but the few bytes it writes always fit in an empty pipe. */
	int report_flags = O_CLOEXEC | (plan.vforked ? O_NONBLOCK : 0);
	if (pipe2(report, report_flags) < 0 || (!plan.vforked && pipe2(release, O_CLOEXEC) < 0)) {
		fail_set(f, "pipe2", errno);
		goto out;
	}
	plan.report_wr = report[1];
	plan.release_rd = release[0];
	plan.close_fds[0] = ctl_fd;
	plan.close_fds[1] = report[0];
	plan.close_fds[2] = release[1];
	plan.close_fds[3] = -1;

	int pidfd = -1;
	const char *stage = "clone";
	uint64_t ns = req->namespaces & ~(uint64_t)CHILD_UNSHARED_NS;
	pid_t pid = plan.vforked ? vfork_child(&plan, ns, &pidfd) : clone_child(ns, &pidfd, &stage);
	if (pid == 0)
		child_main(&plan);
	if (pid < 0) {
		fail_set(f, stage, errno);
		goto out;
	}
	c->pid = pid;
	orphans_note_child(pid);
	c->pidfd = pidfd;
	c->report_rd = report[0];
	c->release_wr = release[1];
	c->vforked = plan.vforked;
	report[0] = release[1] = -1;
	rc = 0;
out:
	for (int i = 0; i < 2; i++) {
		close_fd(&report[i]);
		close_fd(&release[i]);
	}
	for (int t = 0; t < 3; t++)
		close_fd(&owned[t]);
	return rc;
}

/* The child's pid as the /proc we see numbers it. It is c->pid only if that /proc is of
 * our pid namespace; a caller under `unshare --pid --fork` without a new /proc, or a
 * workload of a pid namespace that kept the host's, has another one, where c->pid is some
 * other process, whose id files we would write. The pidfd's fdinfo gives the number in
 * the namespace of the /proc it is read through. Returns 0, or ENOENT (we are not in that
 * /proc) or ESRCH (the child is not: it has no number there, or has died). */
static int proc_pid(const struct child *c, pid_t *out)
{
	char path[64], buf[512];

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", c->pidfd);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	ssize_t n = read_some(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return (int)-n;
	buf[n] = '\0';
	const char *line = strstr(buf, "\nPid:\t");
	long pid = line ? strtol(line + 6, NULL, 10) : 0;
	if (pid <= 0)
		return ESRCH;
	*out = (pid_t)pid;
	return 0;
}

static int write_proc(pid_t pid, const char *file, const char *data, size_t len,
		      const char *stage, struct fail *f)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	int err = write_file_once(path, data, len);
	return err ? fail_set(f, stage, err) : 0;
}

int spawn_write_maps(const struct spawn_req *req, const struct child *c, struct fail *f)
{
	const char *first = req->setgroups ? "setgroups_file" : req->uid_map ? "uid_map" : "gid_map";
	pid_t pid;

	if (!req->setgroups && !req->uid_map && !req->gid_map)
		return 0;
	int err = proc_pid(c, &pid);
	if (err)
		return fail_set(f, first, err);
	if (req->setgroups &&
	    write_proc(pid, "setgroups", req->setgroups, req->setgroups_len, "setgroups_file", f))
		return -1;
	if (req->uid_map && write_proc(pid, "uid_map", req->uid_map, req->uid_map_len, "uid_map", f))
		return -1;
	if (req->gid_map && write_proc(pid, "gid_map", req->gid_map, req->gid_map_len, "gid_map", f))
		return -1;
	return 0;
}

/* PIDFD_GET_MNT_NAMESPACE (Linux 6.11, linux/pidfd.h): a quarter of the cost of the path
 * walk through /proc, which older kernels still get. */
#define PIDFD_IOCTL_MNT_NS _IO(0xFF, 3)

int spawn_hold_mnt_ns(struct child *c)
{
	char path[64];

	c->mnt_ns = ioctl(c->pidfd, PIDFD_IOCTL_MNT_NS, 0);
	if (c->mnt_ns >= 0)
		return 0;
	if (errno != ENOTTY && errno != EINVAL)
		return errno;
	pid_t pid;
	int err = proc_pid(c, &pid);
	if (err)
		return err;
	snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)pid);
	c->mnt_ns = open(path, O_RDONLY | O_CLOEXEC);
	return c->mnt_ns < 0 ? errno : 0;
}

void child_release_ns(struct child *c)
{
	close_fd(&c->mnt_ns);
}

/* PF_FORKNOEXEC (linux/sched.h), which /proc/<pid>/stat shows in its ninth field. */
#define TASK_FORKNOEXEC 0x40u

/* Whether a child with no memory left has not been through execve: 1 (it never got
 * through), 0 (it exec'd), -1 (no /proc of ours to ask). The kernel sets PF_FORKNOEXEC at
 * the clone and clears it in execve before it closes the close-on-exec fds, and nothing
 * sets it again: unlike its name, which any workload may change (to what it was before the
 * exec, even), a process cannot fake it. */
static int never_execd(const struct child *c)
{
	char path[64], stat[256];
	unsigned int flags;
	pid_t pid;

	if (proc_pid(c, &pid))
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read_some(fd, stat, sizeof(stat) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	stat[n] = '\0';
	/* the name, in parentheses, may hold anything, ')' and spaces too; the last ')' ends
	 * it, and flags is the sixth field after it (state ppid pgrp session tty_nr tpgid) */
	const char *rest = strrchr(stat, ')');
	if (!rest || sscanf(rest + 1, " %*c %*d %*d %*d %*d %*d %u", &flags) != 1)
		return -1;
	return (flags & TASK_FORKNOEXEC) != 0;
}

int child_exec_took(const struct child *c)
{
	char byte;
	struct iovec local = { &byte, 1 }, remote = { NULL, 1 };

	/* A process keeps its memory through execve, which swaps the old for the new at once,
	 * and gives it up early in its exit (exit_mm, before exit_files closes the pipe). So
	 * memory (EFAULT, for address 0) means it is running, or inside execve past its point
	 * of no return; one syscall, and the usual answer. Any answer but ESRCH (no memory)
	 * cannot tell, and counts as took. */
	if (process_vm_readv(c->pid, &local, 1, &remote, 1, 0) >= 0 || errno != ESRCH)
		return 1;
	/* No memory: exiting or dead, whether before execve or after (a workload that ran and
	 * ended already); its flags tell which. */
	return never_execd(c) != 1;
}

int child_signal(const struct child *c, int sig)
{
	if (pidfd_send_signal(c->pidfd, sig, NULL, 0) == 0)
		return 0;
	if (errno != EPERM && errno != ENOSYS)
		return errno;
	return kill(c->pid, sig) < 0 ? errno : 0;
}

void child_kill(struct child *c)
{
	if (c->pid <= 0)
		return;
	int err = child_signal(c, SIGKILL);
	/* ESRCH: already dead, nothing to do but reap */
	if (err && err != ESRCH)
		diag("kill", err);
}

/* Waits for the child to exit, and leaves it a zombie. Until then it stays noted: an agent
 * that dies in a long wait (a lingering orphan's) still has the launcher kill it. Returns 0
 * or an errno. */
static int await_exit(const struct child *c)
{
	siginfo_t info;

	while (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOWAIT) < 0) {
		if (errno != EINTR)
			return errno;
	}
	return 0;
}

static int reap(struct child *c, int *status, int exited)
{
	int err = 0;

	*status = 0;
	if (c->pid > 0) {
		err = exited ? 0 : await_exit(c);
		orphans_note_child(0);	/* the wait below frees its pid for reuse */
		while (!err && waitpid(c->pid, status, 0) < 0) {
			if (errno != EINTR) {
				err = errno;
				break;
			}
		}
		c->pid = 0;
	}
	close_fd(&c->pidfd);
	close_fd(&c->report_rd);
	close_fd(&c->release_wr);
	return err;
}

int child_reap(struct child *c, int *status)
{
	return reap(c, status, 0);
}

int child_reap_exited(struct child *c, int *status)
{
	return reap(c, status, 1);
}

void child_discard(struct child *c)
{
	int status;

	child_kill(c);
	/* on an error path, the error already has its frame: this one only its line */
	int err = child_reap(c, &status);
	if (err)
		diag("waitpid", err);
}
