/* child: the code that runs in the cloned child between clone and execve: checkpoint,
 * then one ordered table of pre-exec steps. Must never allocate, use stdio, or return:
 * everything it needs is prepared by spawn.c before clone, and every way out is execve
 * or _exit. Vforked, it runs on the agent's memory: it must write nothing but its own
 * stack (and errno, which the agent does not read after a successful clone). Every
 * function here is CHILD_CODE (util.h). */
#define _GNU_SOURCE
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "report.h"
#include "util.h"

/* The agent dies -> we get SIGKILL. The second half closes the race where the agent died
 * before prctl: the agent holds the report pipe's read end until it exits, and poll on a
 * write end with no reader says POLLERR. */
CHILD_CODE static int arm_pdeathsig(const struct child_plan *p)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		return errno;
	struct pollfd pfd = { .fd = p->report_wr, .events = POLLOUT };
	if (poll(&pfd, 1, 0) < 0)
		return errno;
	if (pfd.revents & POLLERR)
		_exit(0);
	/* cheap extra; in a new pid namespace getppid() is 0, so only outside one */
	if (!(p->req->namespaces & CLONE_NEWPID) && getppid() != p->agent_pid)
		_exit(0);
	return 0;
}

/* The kernel forgets the death signal when euid, egid, fsuid or fsgid change (or
 * capabilities are gained): after the id steps it is armed again if they ran. */
CHILD_CODE static int rearm_pdeathsig(const struct child_plan *p)
{
	if (!p->req->has_uid && !p->req->has_gid)
		return 0;
	return arm_pdeathsig(p);
}

/* First after release: rooted at the cgroup we were moved to while parked, and before
 * the id steps, which may take the capability it needs. */
CHILD_CODE static int step_cgroup_ns(const struct child_plan *p)
{
	if ((p->req->namespaces & CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0)
		return errno;
	return 0;
}

CHILD_CODE static int step_stdio(const struct child_plan *p)
{
	/* every source is >= 3 (the agent keeps 0/1/2 open), so no dup2 clobbers another */
	for (int t = 0; t < 3; t++)
		if (p->stdio_src[t] >= 0 && dup2(p->stdio_src[t], t) < 0)
			return errno;
	for (int t = 0; t < 3; t++) {
		if (p->stdio_close[t]) {
			close(t);
			continue;
		}
		if (p->stdio_src[t] >= 0)
			continue;	/* dup2 onto another number leaves close-on-exec off */
		int fl = fcntl(t, F_GETFD);
		if (fl < 0)
			return errno;
		if ((fl & FD_CLOEXEC) && fcntl(t, F_SETFD, fl & ~FD_CLOEXEC) < 0)
			return errno;
	}
	return 0;
}

/* Whether we are in the directory `path` already: the launcher's, inherited, where the
 * caller was when it started it. getcwd asks the kernel, which needs no permission. */
CHILD_CODE __attribute__((noinline)) static int already_in(const char *path)
{
	char here[PATH_MAX];
	long n = syscall(SYS_getcwd, here, sizeof(here));

	if (n <= 0)
		return 0;
	for (long i = 0; i < n; i++)	/* n counts the NUL */
		if (here[i] != path[i])
			return 0;
	/* The same name may lead elsewhere now: a directory mounted over it since the
	 * launcher started there, which is the one the caller asks for. Where the path can be
	 * looked at (it needs search permission on its parents only), it must be this very
	 * directory; where it cannot (EACCES on a parent), the name is all there is to go by.
	 * AT_EMPTY_PATH: "." would need the search permission on it that we lack. */
	struct stat cur, there;
	if (fstatat(AT_FDCWD, "", &cur, AT_EMPTY_PATH) < 0)
		return 0;
	if (fstatat(AT_FDCWD, path, &there, 0) < 0)
		return errno == EACCES;
	return cur.st_dev == there.st_dev && cur.st_ino == there.st_ino;
}

/* chdir(2) refuses a path of PATH_MAX bytes or more (ENAMETOOLONG), yet a caller may be
 * deeper than that (a build tree, nested node_modules), and a subprocess child would simply
 * inherit its directory. Such a path is walked in pieces shorter than PATH_MAX, each cut at
 * a '/' and taken relative to the last. Returns 0 or an errno. */
CHILD_CODE static int chdir_long(const char *path)
{
	char piece[PATH_MAX];
	size_t len = strlen(path);

	while (len >= PATH_MAX) {
		size_t cut = PATH_MAX - 1;
		while (cut > 0 && path[cut] != '/')
			cut--;
		if (cut == 0)
			return ENAMETOOLONG;	/* one name of PATH_MAX bytes */
		memcpy(piece, path, cut);
		piece[cut] = '\0';
		if (chdir(piece) < 0)
			return errno;
		while (path[cut] == '/')	/* what is left is relative */
			cut++;
		path += cut;
		len -= cut;
	}
	return *path && chdir(path) < 0 ? errno : 0;
}

/* A caller may be in a directory it could not enter now: a server that dropped root in
 * /root, a `sudo -u` from a private directory. Its own children (subprocess, unshare)
 * inherit that directory without a chdir; ours would be refused it (EACCES). Where the
 * child is in that very directory already, as it is when the caller has not moved since
 * its launcher started, the refused chdir has nothing left to do. */
CHILD_CODE static int step_chdir(const struct child_plan *p)
{
	if (!p->req->cwd)
		return 0;
	int err = chdir_long(p->req->cwd);
	/* never already_in a path too long for getcwd: a walk refused half way is no success */
	return err == EACCES && already_in(p->req->cwd) ? 0 : err;
}

/* Raw syscalls for the id changes: glibc's wrappers broadcast to all threads through its
 * own bookkeeping, which a raw clone child does not have in a consistent state. */
CHILD_CODE static int step_setgroups(const struct child_plan *p)
{
	if (p->req->has_groups && syscall(SYS_setgroups, p->req->ngroups, p->req->groups) < 0)
		return errno;
	/* EPERM: this user namespace denies setgroups (an `unshare -r` sandbox, say), which is
	 * there so that groups cannot be dropped; they stay, as they would in a new one. */
	if (p->clear_groups && syscall(SYS_setgroups, 0, NULL) < 0 && errno != EPERM)
		return errno;
	return 0;
}

CHILD_CODE static int step_setgid(const struct child_plan *p)
{
	gid_t g = p->req->gid;

	if (p->req->has_gid && syscall(SYS_setresgid, g, g, g) < 0)
		return errno;
	return 0;
}

CHILD_CODE static int step_setuid(const struct child_plan *p)
{
	uid_t u = p->req->uid;

	if (p->req->has_uid && syscall(SYS_setresuid, u, u, u) < 0)
		return errno;
	return 0;
}

CHILD_CODE static int step_no_new_privs(const struct child_plan *p)
{
	if (p->req->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return errno;
	return 0;
}

/* Ignored signals and the mask survive execve; the workload starts clean. linx-agent reset
 * every disposition when it started (reset_all_signals), so only the ones it ignores since
 * are left to undo: eight syscalls instead of sixty-four on the spawn path. */
CHILD_CODE static int step_signals(const struct child_plan *p)
{
	static const int ignored[] = AGENT_IGNORED_SIGNALS;
	sigset_t none;

	(void)p;
	for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
		int err = default_signal(ignored[i]);
		if (err)
			return err;
	}
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
		return errno;
	return 0;
}

/* CLOEXEC rather than close: the report pipe must stay open up to execve itself. */
CHILD_CODE static int step_close_fds(const struct child_plan *p)
{
	(void)p;
	return close_fds_from(3, 1);
}

/* The pre-exec steps, in order. A new step is one function and one row; the stage is what
 * Python sees in ERROR(stage, errno). */
static const struct {
	const char *stage;
	int (*run)(const struct child_plan *p);
} steps[] = {
	{ "unshare_cgroup", step_cgroup_ns },
	{ "stdio", step_stdio },
	{ "chdir", step_chdir },
	{ "setgroups", step_setgroups },
	{ "setgid", step_setgid },
	{ "setuid", step_setuid },
	{ "pdeathsig", rearm_pdeathsig },
	/* capabilities go here: cap_drop_bounding, cap_set_thread, cap_set_ambient */
	{ "no_new_privs", step_no_new_privs },
	{ "sigprocmask", step_signals },
	{ "close_range", step_close_fds },
	/* seccomp_install goes here, last (SPEC 5): then the filter only has to allow what
	 * is left, write (the 'E'/'X' records) and execve */
};

CHILD_CODE static _Noreturn void die(const struct child_plan *p, const char *stage, int err)
{
	report_error(p->report_wr, stage, err);
	_exit(127);
}

/* The agent writes these from outside when it can wait for us; a vforked child writes its
 * own, which the kernel allows for the single line mapping its own euid/egid (and the
 * gid only after setgroups "deny"): exactly the maps spawn.c lets through. */
CHILD_CODE static void write_own_maps(const struct child_plan *p)
{
	const struct spawn_req *r = p->req;
	int err;

	if (r->setgroups &&
	    (err = write_file_once("/proc/self/setgroups", r->setgroups, r->setgroups_len)))
		die(p, "setgroups_file", err);
	if (r->uid_map && (err = write_file_once("/proc/self/uid_map", r->uid_map, r->uid_map_len)))
		die(p, "uid_map", err);
	if (r->gid_map && (err = write_file_once("/proc/self/gid_map", r->gid_map, r->gid_map_len)))
		die(p, "gid_map", err);
}

/* One byte releases us; EOF means abort, or the agent is gone. */
CHILD_CODE static void checkpoint(const struct child_plan *p)
{
	char go;

	if (read_some(p->release_rd, &go, 1) != 1)
		_exit(0);
	close(p->release_rd);
}

CHILD_CODE _Noreturn void child_main(const struct child_plan *p)
{
	const struct spawn_req *r = p->req;
	int err;

	/* first: arm_pdeathsig's POLLERR test needs the agent's read end to be the last one */
	for (int i = 0; i < 4; i++)
		if (p->close_fds[i] >= 0)
			close(p->close_fds[i]);
	if ((err = arm_pdeathsig(p)))
		die(p, "pdeathsig", err);
	if (p->vforked)
		write_own_maps(p);

	if (r->hostname && sethostname(r->hostname, r->hostname_len) < 0)
		die(p, "sethostname", errno);
	if ((r->namespaces & CLONE_NEWTIME) && unshare(CLONE_NEWTIME) < 0)
		die(p, "unshare_time", errno);

	if (report_ready(p->report_wr, (int32_t)getpid()))
		_exit(127);
	/* vforked, the agent cannot release us until we exec: auto_proceed is implied */
	if (!p->vforked)
		checkpoint(p);

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		if ((err = steps[i].run(p)))
			die(p, steps[i].stage, err);

	/* 'E' then EOF (the pipe is CLOEXEC), or vforked, 'E' and clone returning, tells the
	 * agent execve worked */
	if (report_exec(p->report_wr))
		_exit(127);
	execve(r->argv[0], r->argv, r->envp);
	die(p, "execve", errno);
}

CHILD_CODE int child_vfork_entry(void *arg)
{
	child_main(arg);
}
