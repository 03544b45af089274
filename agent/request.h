/* request: decodes and validates what Python asks for (SPAWN, commands, START_AGENT) into
 * plain structs. Pure code: must never do I/O or act on a request, and must reject (not
 * crash on, not truncate) anything docs/protocol.md does not allow. */
#ifndef LINX_REQUEST_H
#define LINX_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

#define PROTOCOL_VERSION 1u

enum stdio_kind {
	STDIO_INHERIT = 0,	/* field absent */
	STDIO_FD = 1,
	STDIO_DEVNULL = 2,
	STDIO_CONNECT_UNIX = 3,
	STDIO_CLOSED = 4,
};

struct stdio_spec {
	int kind;
	uint32_t fd_index;	/* STDIO_FD */
	const char *path;	/* STDIO_CONNECT_UNIX, NUL-terminated */
	size_t path_len;
};

/* Every string and array points into one allocation owned by the struct, so the frame
 * buffer can go once the request is decoded. NULL / has_* = 0 means the field was absent. */
struct spawn_req {
	char **argv;		/* NULL-terminated, argc >= 1 */
	size_t argc;
	char **envp;		/* NULL-terminated, possibly empty */
	size_t envc;
	const char *cwd;
	uint64_t namespaces;
	const char *hostname;
	size_t hostname_len;
	const char *uid_map;
	size_t uid_map_len;
	const char *gid_map;
	size_t gid_map_len;
	const char *setgroups;	/* "deny" or "allow" */
	size_t setgroups_len;
	int has_uid, has_gid, has_groups;
	uint32_t uid, gid;
	uint32_t *groups;
	size_t ngroups;
	struct stdio_spec stdio[3];
	int auto_proceed;
	int no_new_privs;
	int orphan_linger;
	uint64_t orphan_grace_ms;
	void *mem;
};

/* CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET,TIME} and no other bit: any other one is a
 * clone flag of its own (0x80000000 is CLONE_IO) or lies in the exit signal's byte
 * (CSIGNAL, which CLONE_NEWTIME shares), where the legacy clone and the vfork path would
 * take it as part of the signal. request.c checks it against <sched.h>. */
#define NAMESPACE_FLAGS_ALL 0x7e020080ull
#define ORPHAN_GRACE_DEFAULT_MS 5000u

/* nfds: how many fds arrived with the frame (stdio fd indexes must be below it).
 * Returns 0, EINVAL for a malformed request, or ENOMEM. */
int request_decode_spawn(const struct wire_frame *f, size_t nfds, struct spawn_req *out);
void request_free(struct spawn_req *r);

/* Commands and START_AGENT; -1 if malformed. */
int request_decode_empty(const struct wire_frame *f);
int request_decode_signal(const struct wire_frame *f, uint32_t *signum);
int request_decode_start_agent(const struct wire_frame *f, uint64_t *token);

#endif
