/* orphans: see orphans.h. */
#define _GNU_SOURCE
#include "orphans.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "util.h"

/* Entries, one per live agent: half of what the largest pid_max (2^22) allows, each agent
 * and its child being two processes, and far more than memory does (an agent is some
 * 400 KiB). 4 MiB of address space, shared; a page is memory only once an entry in it is
 * used. */
#define TABLE_ENTRIES (1L << 20)

static _Atomic pid_t *table;	/* MAP_SHARED: the launcher's and every agent's */
static _Atomic pid_t *mine;	/* an agent's own entry (the launcher's: the last it gave) */

/* launcher only: entries freed by ended agents, and the first never used */
static long *free_entries;
static long nfree, free_cap, next_unused;

int orphans_init(void)
{
	/* first: a table with no subreaper to make its pids ours is worse than none */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1L, 0L, 0L, 0L) < 0)
		return errno;
	void *p = mmap(NULL, TABLE_ENTRIES * sizeof(*table), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return errno;
	table = p;
	return 0;
}

/* Room to free every entry handed out, made before one is: freeing cannot fail then. */
static int reserve_free_room(void)
{
	if (next_unused < free_cap)
		return 0;
	long ncap = free_cap ? free_cap * 2 : 64;
	long *p = realloc(free_entries, (size_t)ncap * sizeof(*p));
	if (!p)
		return ENOMEM;
	free_entries = p;
	free_cap = ncap;
	return 0;
}

long orphans_claim(void)
{
	long entry = -1;

	if (table && nfree > 0)
		entry = free_entries[--nfree];
	else if (table && next_unused < TABLE_ENTRIES && reserve_free_room() == 0)
		entry = next_unused++;
	/* the fork copies this: the agent writes its entry, no other */
	mine = entry < 0 ? NULL : &table[entry];
	return entry;
}

/* Whether pid is a child of ours not reaped yet (alive, or a zombie), left reapable. */
static int own_unreaped_child(pid_t pid)
{
	siginfo_t info;

	while (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0) {
		if (errno == EINTR)
			continue;
		if (errno != ECHILD)
			diag("orphan waitid", errno);
		return 0;
	}
	return 1;
}

void orphans_agent_gone(long entry)
{
	if (entry < 0)
		return;
	pid_t pid = atomic_exchange(&table[entry], 0);
	free_entries[nfree++] = entry;
	/* A noted pid is unreaped: the agent clears its entry before its own wait, and we
	 * clear the entry of an inherited child we reap before we signal anything again
	 * (orphans_reaped). Checked anyway: a pid that is somebody else's is never
	 * signalled. */
	if (pid > 0 && own_unreaped_child(pid) && kill(pid, SIGKILL) < 0 && errno != ESRCH)
		diag("orphan kill", errno);
}

void orphans_reaped(pid_t pid)
{
	if (!table)
		return;
	for (long i = 0; i < next_unused; i++) {
		pid_t noted = pid;
		atomic_compare_exchange_strong(&table[i], &noted, 0);
	}
}

void orphans_note_child(pid_t pid)
{
	if (mine)
		atomic_store(mine, pid);
}
