/* request: decodes and validates what Python asks for (SPAWN, commands, START_AGENT) into
 * plain structs. Pure code: must never do I/O or act on a request, and must reject (not
 * crash on, not truncate) anything docs/protocol.md does not allow. */
#define _GNU_SOURCE
#include "request.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(NAMESPACE_FLAGS_ALL == (uint64_t)(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
						  CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
						  CLONE_NEWNET | CLONE_NEWTIME),
	       "NAMESPACE_FLAGS_ALL is the eight CLONE_NEW* flags");

enum {
	T_VERSION = 1, T_ARGV, T_ENV, T_CWD, T_NAMESPACES, T_HOSTNAME, T_UID_MAP, T_GID_MAP,
	T_SETGROUPS, T_UID, T_GID, T_GROUPS, T_STDIN, T_STDOUT, T_STDERR, T_AUTO_PROCEED,
	T_NO_NEW_PRIVS, T_ORPHAN_GRACE_MS, T_ORPHAN_LINGER,
	T_MAX_KNOWN = T_ORPHAN_LINGER,
};

static int has_nul(const struct wire_field *f)
{
	return f->size > 0 && memchr(f->val, 0, f->size) != NULL;
}

static int check_stdio(const struct wire_field *f, size_t nfds, struct stdio_spec *s)
{
	if (f->size < 1)
		return -1;
	s->kind = f->val[0];
	switch (s->kind) {
	case STDIO_FD:
		if (f->size != 5)
			return -1;
		s->fd_index = wire_get_u32(f->val + 1);
		return s->fd_index < nfds ? 0 : -1;
	case STDIO_DEVNULL:
	case STDIO_CLOSED:
		return f->size == 1 ? 0 : -1;
	case STDIO_CONNECT_UNIX:
		/* a path too long for sun_path is connect_unix/ENAMETOOLONG, not malformed; an
		 * empty one would be the abstract address "\0" (connect_unix adds the NUL),
		 * which any process in the agent's network namespace may be listening on */
		return f->size > 1 && !memchr(f->val + 1, 0, f->size - 1) ? 0 : -1;
	default:
		return -1;
	}
}

/* Pass 1: validate every field, fill the scalars, and size the allocation. */
static int validate(const struct wire_frame *f, size_t nfds, struct spawn_req *r,
		    size_t *strbytes)
{
	struct wire_iter it;
	struct wire_field fl;
	uint32_t seen = 0, v32;
	int rc, have_version = 0;

	wire_iter_init(&it, f);
	while ((rc = wire_next(&it, &fl)) == 1) {
		/* unknown: room for new optional fields (tag 0 is no field of ours either, and
		 * must not reach the repeat check) */
		if (fl.tag == 0 || fl.tag > T_MAX_KNOWN)
			continue;
		if (fl.tag != T_ARGV && fl.tag != T_ENV && (seen & (1u << fl.tag)))
			return -1;
		seen |= 1u << fl.tag;
		switch (fl.tag) {
		case T_VERSION:
			if (wire_u32(&fl, &v32) || v32 != PROTOCOL_VERSION)
				return -1;
			have_version = 1;
			break;
		case T_ARGV:
		case T_ENV:
		case T_CWD:
		case T_HOSTNAME:
			if (has_nul(&fl))
				return -1;
			if (fl.tag == T_ARGV)
				r->argc++;
			if (fl.tag == T_ENV)
				r->envc++;
			*strbytes += (size_t)fl.size + 1;
			break;
		case T_UID_MAP:
		case T_GID_MAP:
			*strbytes += (size_t)fl.size + 1;
			break;
		case T_SETGROUPS:
			if (!(fl.size == 4 && memcmp(fl.val, "deny", 4) == 0) &&
			    !(fl.size == 5 && memcmp(fl.val, "allow", 5) == 0))
				return -1;
			*strbytes += (size_t)fl.size + 1;
			break;
		case T_NAMESPACES:
			if (wire_u64(&fl, &r->namespaces) || (r->namespaces & ~NAMESPACE_FLAGS_ALL))
				return -1;
			break;
		case T_UID:
		case T_GID:
			/* (u32)-1 would mean "leave unchanged" to setresuid: never what was asked */
			if (wire_u32(&fl, &v32) || v32 == UINT32_MAX)
				return -1;
			if (fl.tag == T_UID) {
				r->uid = v32;
				r->has_uid = 1;
			} else {
				r->gid = v32;
				r->has_gid = 1;
			}
			break;
		case T_GROUPS:
			if (fl.size % 4)
				return -1;
			r->has_groups = 1;
			r->ngroups = fl.size / 4;
			break;
		case T_STDIN:
		case T_STDOUT:
		case T_STDERR:
			if (check_stdio(&fl, nfds, &r->stdio[fl.tag - T_STDIN]))
				return -1;
			if (r->stdio[fl.tag - T_STDIN].kind == STDIO_CONNECT_UNIX)
				*strbytes += fl.size;	/* path minus kind byte, plus NUL */
			break;
		case T_AUTO_PROCEED:
		case T_NO_NEW_PRIVS:
		case T_ORPHAN_LINGER:
			if (wire_u32(&fl, &v32))
				return -1;
			if (fl.tag == T_AUTO_PROCEED)
				r->auto_proceed = v32 != 0;
			else if (fl.tag == T_NO_NEW_PRIVS)
				r->no_new_privs = v32 != 0;
			else
				r->orphan_linger = v32 != 0;
			break;
		case T_ORPHAN_GRACE_MS:
			if (wire_u64(&fl, &r->orphan_grace_ms))
				return -1;
			break;
		default:
			break;
		}
	}
	if (rc < 0 || !have_version || r->argc == 0)
		return -1;
	/* without its own UTS namespace the child would rename the host */
	if ((seen & (1u << T_HOSTNAME)) && !(r->namespaces & CLONE_NEWUTS))
		return -1;
	return 0;
}

static char *copy_str(char **cursor, const void *src, size_t n)
{
	char *s = *cursor;

	memcpy(s, src, n);
	s[n] = '\0';
	*cursor += n + 1;
	return s;
}

int request_decode_spawn(const struct wire_frame *f, size_t nfds, struct spawn_req *r)
{
	size_t strbytes = 0;

	memset(r, 0, sizeof(*r));
	r->orphan_grace_ms = ORPHAN_GRACE_DEFAULT_MS;
	if (validate(f, nfds, r, &strbytes))
		return EINVAL;

	size_t ptrbytes = (r->argc + 1 + r->envc + 1) * sizeof(char *);
	size_t grpbytes = r->ngroups * sizeof(uint32_t);
	r->mem = malloc(ptrbytes + grpbytes + strbytes + 1);
	if (!r->mem)
		return ENOMEM;
	r->argv = r->mem;
	r->envp = r->argv + r->argc + 1;
	r->groups = (uint32_t *)(void *)(r->envp + r->envc + 1);
	char *cursor = (char *)r->groups + grpbytes;

	struct wire_iter it;
	struct wire_field fl;
	size_t ai = 0, ei = 0;
	wire_iter_init(&it, f);
	while (wire_next(&it, &fl) == 1) {
		switch (fl.tag) {
		case T_ARGV:
			r->argv[ai++] = copy_str(&cursor, fl.val, fl.size);
			break;
		case T_ENV:
			r->envp[ei++] = copy_str(&cursor, fl.val, fl.size);
			break;
		case T_CWD:
			r->cwd = copy_str(&cursor, fl.val, fl.size);
			break;
		case T_HOSTNAME:
			r->hostname = copy_str(&cursor, fl.val, fl.size);
			r->hostname_len = fl.size;
			break;
		case T_UID_MAP:
			r->uid_map = copy_str(&cursor, fl.val, fl.size);
			r->uid_map_len = fl.size;
			break;
		case T_GID_MAP:
			r->gid_map = copy_str(&cursor, fl.val, fl.size);
			r->gid_map_len = fl.size;
			break;
		case T_SETGROUPS:
			r->setgroups = copy_str(&cursor, fl.val, fl.size);
			r->setgroups_len = fl.size;
			break;
		case T_GROUPS:
			for (size_t i = 0; i < r->ngroups; i++)
				r->groups[i] = wire_get_u32(fl.val + 4 * i);
			break;
		case T_STDIN:
		case T_STDOUT:
		case T_STDERR: {
			struct stdio_spec *s = &r->stdio[fl.tag - T_STDIN];
			if (s->kind == STDIO_CONNECT_UNIX) {
				s->path = copy_str(&cursor, fl.val + 1, fl.size - 1);
				s->path_len = fl.size - 1;
			}
			break;
		}
		default:
			break;
		}
	}
	r->argv[ai] = NULL;
	r->envp[ei] = NULL;
	return 0;
}

void request_free(struct spawn_req *r)
{
	free(r->mem);
	memset(r, 0, sizeof(*r));
}

/* A command's fields: every TLV whole, known tags at most once and of the right size. */
static int command_fields(const struct wire_frame *f, uint16_t want_tag, uint32_t *val,
			  int *found)
{
	struct wire_iter it;
	struct wire_field fl;
	int rc;

	*found = 0;
	wire_iter_init(&it, f);
	while ((rc = wire_next(&it, &fl)) == 1) {
		if (!want_tag || fl.tag != want_tag)
			continue;
		if (*found || wire_u32(&fl, val))
			return -1;
		*found = 1;
	}
	return rc;
}

int request_decode_empty(const struct wire_frame *f)
{
	uint32_t unused;
	int found;

	return command_fields(f, 0, &unused, &found);
}

int request_decode_signal(const struct wire_frame *f, uint32_t *signum)
{
	int found;

	if (command_fields(f, 1, signum, &found) || !found)
		return -1;
	return 0;
}

int request_decode_start_agent(const struct wire_frame *f, uint64_t *token)
{
	struct wire_iter it;
	struct wire_field fl;
	int rc, found = 0;

	wire_iter_init(&it, f);
	while ((rc = wire_next(&it, &fl)) == 1) {
		if (fl.tag != 1)
			continue;
		if (found || wire_u64(&fl, token))
			return -1;
		found = 1;
	}
	return rc < 0 || !found ? -1 : 0;
}
