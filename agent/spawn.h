/* spawn: the agent's side of making and handling its one child: host-side stdio, pipes,
 * clone3 (or its fallback, or the vfork path), the uid/gid maps written from outside,
 * kill and reap. Must never talk to Python (agent.c does) nor run code meant for the
 * child (child.c). */
#ifndef LINX_SPAWN_H
#define LINX_SPAWN_H

#include <sys/types.h>

#include "request.h"
#include "util.h"

struct child {
	pid_t pid;		/* 0: none, or reaped */
	int pidfd;
	int report_rd;		/* agent's end of the report pipe */
	int release_wr;		/* agent's end of the release pipe; -1 when vforked */
	int vforked;		/* made by clone(CLONE_VM | CLONE_VFORK): it has exec'd or
				 * exited by now, and report_rd (non-blocking) holds all it wrote */
	int mnt_ns;		/* its mount namespace, held past its exit (spawn_hold_mnt_ns) */
};

#define CHILD_NONE { 0, -1, -1, -1, 0, -1 }

/* Creates the child parked at the checkpoint or, for an auto_proceed request that allows
 * it, vforked (see vfork_fits). passed: the fds received with the request, which the
 * caller still owns. ctl_fd: the control socket, which the child must not keep.
 * Returns 0, or -1 with *f set and nothing left behind. */
int spawn_start(const struct spawn_req *req, const int *passed, int ctl_fd,
		struct child *c, struct fail *f);

/* setgroups, uid_map, gid_map under the child's /proc/<pid>/, as far as the request has
 * them; the child must be alive (parked). */
int spawn_write_maps(const struct spawn_req *req, const struct child *c, struct fail *f);

/* Keeps the child's new mount namespace alive past the child: the last reference to a
 * mount namespace tears down its mount tree and waits for an RCU grace period, and made by
 * the exiting child that wait comes before the kernel reports the exit to us (measured:
 * ~30-40 us of every 5-namespace spawn). Held here, it happens in child_release_ns, after
 * the outcome is out. Returns 0, or the errno of getting it (through the pidfd, or
 * /proc/<pid>/ns/mnt before Linux 6.11); ESRCH or ENOENT means the child is gone already,
 * and there is nothing to hold. */
int spawn_hold_mnt_ns(struct child *c);
/* Drops that reference; for once the terminal frame is written. */
void child_release_ns(struct child *c);

/* After 'E' and the report pipe's EOF (or, vforked, clone's return), both of which come
 * from a successful execve and from an exit alike: 0 if the child is exiting, or dead,
 * without having got through execve (killed between the 'E' and execve's point of no
 * return), else 1. Where it cannot tell (ptrace denied, no /proc of ours), it says 1: the
 * workload's outcome follows anyway, and a workload that ran is never reported failed. */
int child_exec_took(const struct child *c);

/* Sends sig through the pidfd, or where a seccomp profile refuses pidfd_send_signal (EPERM,
 * ENOSYS) by kill(2): safe while the child is not reaped, since only our wait frees its
 * pid. Returns 0 or an errno (ESRCH: it is dead already). */
int child_signal(const struct child *c, int sig);
/* SIGKILL (child_signal). */
void child_kill(struct child *c);
/* Waits for the child and closes our ends. Returns 0 with its wait status in *status, or
 * waitpid's errno (the child is given up on either way). */
int child_reap(struct child *c, int *status);
/* The same for a child whose pidfd has said it exited: no wait for the exit first, one
 * syscall fewer on the way to the outcome. */
int child_reap_exited(struct child *c, int *status);
/* Both, for every error path (a waitpid failure there goes to diag). */
void child_discard(struct child *c);

#endif
