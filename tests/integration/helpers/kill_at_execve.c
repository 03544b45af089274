/* Test helper: runs linx-agent ($LINX_REAL_AGENT) under a seccomp filter that kills any
 * process of it calling execve. Every workload's child then dies on entry to execve, after
 * its exec marker: the "killed on its way into execve" case, at full speed (no tracer). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "seccomp_filter.h"

extern char **environ;

int main(int argc, char **argv)
{
	const char *agent = getenv("LINX_REAL_AGENT");
	struct sock_filter filter[] = {
		LOAD_NATIVE_SYSCALL_NR,
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execve, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog program = { sizeof(filter) / sizeof(filter[0]), filter };

	(void)argc;
	if (!agent) {
		fputs("kill_at_execve: set LINX_REAL_AGENT\n", stderr);
		return 2;
	}
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) < 0) {
		perror("kill_at_execve: seccomp");
		return 1;
	}
	/* execveat: a different syscall, so the agent itself still starts */
	syscall(SYS_execveat, AT_FDCWD, agent, argv, environ, 0);
	perror("kill_at_execve: execveat");
	return 1;
}
