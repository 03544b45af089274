/* agent: one session's event loop (fd 3 <-> one child): request, checkpoint, commands,
 * exec report, exit status, orphan policy. Must never block on Python, write a frame out
 * of the protocol's order, or leave a child unreaped. */
#ifndef LINX_AGENT_H
#define LINX_AGENT_H

/* Runs the session on ctl_fd; returns the process exit status: 0 once a terminal frame is
 * written or Python is gone, 1 if the channel failed on our side. */
int agent_main(int ctl_fd);

#endif
