/* main: linx-agent's entry: checks the process it was started in and dispatches to the
 * launcher or a single agent. Must never do protocol work itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "launcher.h"
#include "util.h"

#define CTL_FD 3

static int usage(void)
{
	static const char msg[] =
		"usage: linx-agent --launcher | --agent\n"
		"  fd 3 is the control socket (docs/protocol.md); not for interactive use\n";
	(void)!write(2, msg, sizeof(msg) - 1);
	return 2;
}

int main(int argc, char **argv)
{
	int err;

	if (argc != 2)
		return usage();
	/* whatever our starter left ignored would otherwise reach every workload */
	if ((err = reset_all_signals())) {
		diag("reset signals", err);
		return 1;
	}
	/* the terminal's signals are for the Python program, not for us or the agents (which
	 * inherit this); the workload restores every one of them before execve */
	if ((err = ignore_agent_signals())) {
		diag("ignore signals", err);
		return 1;
	}
	if ((err = ensure_std_fds())) {
		diag("stdio", err);
		return 1;
	}
	if ((err = stream_socket_err(CTL_FD))) {
		diag("fd 3", err);
		return 2;
	}
	if (strcmp(argv[1], "--launcher") == 0)
		return launcher_main(CTL_FD);
	if (strcmp(argv[1], "--agent") == 0)
		return agent_main(CTL_FD);
	return usage();
}
