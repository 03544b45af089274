/* A workload that takes the name argv[1] (PR_SET_NAME) and exits with status argv[2] at
 * once: it is done before its agent has looked at it, as a tiny program often is. */
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3 || prctl(PR_SET_NAME, argv[1], 0, 0, 0) < 0)
		_exit(125);
	_exit(atoi(argv[2]));
}
