/* Installed set-user-ID root by the test: says which effective uid its execve gave it,
 * then waits to be killed. The kernel clears the death signal at such an execve. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	printf("%d\n", (int)geteuid());
	fflush(stdout);
	for (;;)
		pause();
}
