/* Test helper: runs linx-agent ($LINX_REAL_AGENT) under a seccomp filter that kills any
 * process of it making the syscall named $LINX_KILL_SYSCALL (one of `known` below). For a
 * syscall only the child makes (sethostname, or execve), the child dies right there, with
 * no error record: a death at a chosen point of its way, without a tracer or a race. The
 * agent itself is started with execveat, a different syscall, so execve may be the one. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "seccomp_filter.h"

extern char **environ;

static const struct {
	const char *name;
	unsigned nr;
} known[] = {
	{ "sethostname", __NR_sethostname },
	{ "execve", __NR_execve },
};

static int lookup(const char *name, unsigned *nr)
{
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (strcmp(known[i].name, name) == 0) {
			*nr = known[i].nr;
			return 0;
		}
	}
	return -1;
}

int main(int argc, char **argv)
{
	const char *agent = getenv("LINX_REAL_AGENT");
	const char *name = getenv("LINX_KILL_SYSCALL");
	unsigned nr;

	(void)argc;
	if (!agent || !name || lookup(name, &nr) < 0) {
		fputs("kill_at_syscall: set LINX_REAL_AGENT, and LINX_KILL_SYSCALL to a known name\n",
		      stderr);
		return 2;
	}
	struct sock_filter filter[] = {
		LOAD_NATIVE_SYSCALL_NR,
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog program = { sizeof(filter) / sizeof(filter[0]), filter };

	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) < 0) {
		perror("kill_at_syscall: seccomp");
		return 1;
	}
	syscall(SYS_execveat, AT_FDCWD, agent, argv, environ, 0);
	perror("kill_at_syscall: execveat");
	return 1;
}
