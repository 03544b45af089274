/* launcher: the long-lived per-Python-process forker: START_AGENT -> fork an agent with
 * the session socket on fd 3; reap agents and report AGENT_EXITED; kill the child of an
 * agent that died (orphans.h). Must never keep session state beyond pid -> token and the
 * agent's orphans entry, nor tie an agent's life to its own. */
#ifndef LINX_LAUNCHER_H
#define LINX_LAUNCHER_H

int launcher_main(int ctl_fd);

#endif
