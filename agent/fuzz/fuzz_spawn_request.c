/* fuzz_spawn_request: libFuzzer harness for the agent's first-frame path: wire.c framing
 * then request.c's SPAWN decoder, checking the decoded struct's invariants. Input: one
 * byte (how many fds "arrived", 0..3), then the frame bytes. Must never do I/O. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "wire.h"

static void check(int ok)
{
	if (!ok)
		abort();
}

static void check_str(const char *s, size_t len)
{
	/* reading every byte lets ASan see any pointer outside the allocation */
	check(strlen(s) == len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_frame f;
	struct spawn_req r;
	uint32_t sig;

	if (size < 1)
		return 0;
	size_t nfds = data[0] % 4;
	if (wire_parse_frame(data + 1, size - 1, WIRE_CAP_REQUEST, &f) != WIRE_OK)
		return 0;
	check(f.total <= size - 1 && f.fields + f.fields_len == data + 1 + f.total);

	/* the command decoders see the same bytes in the agent, so give them a go too */
	(void)request_decode_empty(&f);
	(void)request_decode_signal(&f, &sig);

	int rc = request_decode_spawn(&f, nfds, &r);
	check(rc == 0 || rc == EINVAL || rc == ENOMEM);
	if (rc)
		return 0;
	check(r.argc >= 1 && r.argv[r.argc] == NULL && r.envp[r.envc] == NULL);
	for (size_t i = 0; i < r.argc; i++)
		check(r.argv[i] != NULL && strlen(r.argv[i]) < f.fields_len);
	for (size_t i = 0; i < r.envc; i++)
		check(r.envp[i] != NULL && strlen(r.envp[i]) < f.fields_len);
	if (r.cwd)
		(void)strlen(r.cwd);
	if (r.hostname)
		check_str(r.hostname, r.hostname_len);
	if (r.setgroups)
		check(strcmp(r.setgroups, "deny") == 0 || strcmp(r.setgroups, "allow") == 0);
	if (r.uid_map)
		check(r.uid_map[r.uid_map_len] == '\0');
	if (r.gid_map)
		check(r.gid_map[r.gid_map_len] == '\0');
	check((r.namespaces & ~NAMESPACE_FLAGS_ALL) == 0);
	check(!r.has_uid || r.uid != UINT32_MAX);
	uint64_t gsum = 0;
	for (size_t i = 0; i < r.ngroups; i++)
		gsum += r.groups[i];
	(void)gsum;
	for (int t = 0; t < 3; t++) {
		const struct stdio_spec *s = &r.stdio[t];
		check(s->kind >= STDIO_INHERIT && s->kind <= STDIO_CLOSED);
		if (s->kind == STDIO_FD)
			check(s->fd_index < nfds);
		if (s->kind == STDIO_CONNECT_UNIX)
			check(s->path_len > 0 && strlen(s->path) == s->path_len);
	}
	request_free(&r);
	return 0;
}
