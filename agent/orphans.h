/* orphans: what the launcher needs to end a workload whose agent died. The death signal
 * does that for most workloads, but the kernel clears it when a process changes its
 * effective ids or gains capabilities: at a set-user-ID or file-capability execve, or when
 * the workload itself drops root (setuid(2), `setpriv`, `gosu`). So each agent notes its
 * child's pid in a table it shares with the launcher, and the launcher, a child subreaper,
 * inherits the child of an agent that dies and kills it. Must never signal a process that
 * is not its own unreaped child: that is what makes a noted pid safe to use. */
#ifndef LINX_ORPHANS_H
#define LINX_ORPHANS_H

#include <sys/types.h>

/* Launcher, at start: become a child subreaper and map the table. Returns 0 or an errno;
 * without the table, agents note nothing and the death signal is all there is. */
int orphans_init(void);

/* Launcher, before forking an agent: a free entry of the table, made the one the forked
 * agent will write (it inherits the choice). Returns the entry, or -1 if there is none
 * (no table, or every entry in use: that agent goes without). */
long orphans_claim(void);

/* Launcher, once it has reaped the agent of `entry` (-1: none): kills the child the agent
 * left noted, which is then the launcher's own (a zombie, or alive and unable to outlive
 * us unnoticed), and frees the entry. */
void orphans_agent_gone(long entry);

/* Launcher, for a reaped process that is not an agent: an inherited child (an orphaned
 * workload, or what a workload left running when it ended). Forgets it wherever it is
 * noted, so that no later orphans_agent_gone signals its pid, which is free again. */
void orphans_reaped(pid_t pid);

/* Agent: its child is `pid` (0: about to be reaped: clear it once the child has exited,
 * not before, and before the wait that frees the pid). A no-op in an agent that did not
 * come from a launcher with a table. */
void orphans_note_child(pid_t pid);

#endif
