/* child: the code that runs in the cloned child between clone and execve: checkpoint,
 * then one ordered table of pre-exec steps. Must never allocate, use stdio, or return:
 * everything it needs is prepared by spawn.c before clone, and every way out is execve
 * or _exit. Vforked, it runs on the agent's memory: it must write nothing but its own
 * stack (and errno, which the agent does not read after a successful clone). */
#ifndef LINX_CHILD_H
#define LINX_CHILD_H

#include <sched.h>
#include <sys/types.h>

#include "request.h"

/* Everything the child needs, filled in by the agent before clone. */
struct child_plan {
	const struct spawn_req *req;
	int stdio_src[3];	/* fd to dup2 onto 0/1/2, or -1 */
	int stdio_close[3];	/* close 0/1/2 */
	int report_wr;		/* child's end of the report pipe */
	int release_rd;		/* child's end of the release pipe; -1 when vforked */
	int close_fds[4];	/* the agent's fds the child must not keep (-1: none) */
	pid_t agent_pid;
	int clear_groups;	/* no groups given, but a uid/gid: drop ours (spawn.c) */
	int vforked;		/* clone(CLONE_VM | CLONE_VFORK): the agent is suspended until
				 * we exec or exit, so there is no checkpoint, and the id maps are
				 * ours to write (spawn.c took this path only if we can) */
};

/* Namespaces the child makes itself with unshare rather than getting them from clone, so
 * that the caller can shape them at the checkpoint first. A time namespace: the child
 * unshares it before its ready record, and enters it only at execve, so its offsets can be
 * written to /proc/<pid>/timens_offsets while it is parked (they are fixed once a process
 * is in it). A cgroup namespace: the child unshares it right after release, so its root is
 * the cgroup the child was moved to while parked, not the agent's. */
#define CHILD_UNSHARED_NS (CLONE_NEWTIME | CLONE_NEWCGROUP)

_Noreturn void child_main(const struct child_plan *p);

/* child_main for glibc's clone(): arg is the plan. */
int child_vfork_entry(void *arg);

#endif
