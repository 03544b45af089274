/* chan: the I/O half of a Python-facing channel (fd 3): accumulates bytes and SCM_RIGHTS
 * fds from recvmsg, hands out whole frames via wire.c, and queues and sends frames. Must
 * never interpret a frame (that is request.c's job) nor block, receiving or sending. */
#define _GNU_SOURCE
#include "chan.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64u << 10)
#define MAX_FDS_PER_MSG 253	/* SCM_MAX_FD */

void chan_init(struct chan *c, int fd)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
}

void chan_free(struct chan *c)
{
	chan_close_fds(c);
	free(c->buf);
	free(c->fds);
	free(c->out);
	c->buf = NULL;
	c->fds = NULL;
	c->out = NULL;
	c->len = c->cap = c->fdcap = c->outlen = c->outcap = 0;
}

static int grow(struct chan *c, size_t want)
{
	if (want <= c->cap)
		return 0;
	uint8_t *nb = realloc(c->buf, want);
	if (!nb)
		return -1;
	c->buf = nb;
	c->cap = want;
	return 0;
}

static void push_fd(struct chan *c, int fd)
{
	if (c->nfds == c->fdcap) {
		size_t ncap = c->fdcap ? c->fdcap * 2 : 8;
		int *nf = ncap <= CHAN_MAX_FDS ? realloc(c->fds, ncap * sizeof(int)) : NULL;
		if (!nf) {
			close(fd);
			c->truncated = 1;
			return;
		}
		c->fds = nf;
		c->fdcap = ncap;
	}
	c->fds[c->nfds++] = fd;
}

long chan_fill(struct chan *c, uint32_t frame_cap)
{
	/* Room for the whole current frame when its length is known (and allowed), else a
	 * chunk; never more than one maximal frame plus a chunk of what follows it. */
	size_t want = c->len + CHUNK, frame_end = WIRE_HDR;
	if (c->len >= WIRE_HDR) {
		uint32_t flen = wire_get_u32(c->buf);
		frame_end = 0;
		if (flen <= frame_cap && WIRE_HDR + (size_t)flen > c->len)
			want = frame_end = WIRE_HDR + (size_t)flen;
	}
	if (want < c->len + 1)
		want = c->len + 1;
	if (grow(c, want) < 0)
		return -ENOMEM;
	/* The kernel hands over a message's fds with the read that reaches its first byte,
	 * and that read may run on into the next frame: only a read that stops at the frame's
	 * end tells whose fds they are. (Past a length over the cap the frame is refused
	 * anyway, so the read need not stop.) */
	size_t room = c->cap - c->len;
	if (c->one_frame && frame_end)
		room = frame_end - c->len;

	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
	} cbuf;
	struct iovec iov = { c->buf + c->len, room };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = cbuf.buf,
		.msg_controllen = sizeof(cbuf.buf),
	};
	ssize_t n;
	do {
		n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			push_fd(c, fd);
		}
	}
	if (msg.msg_flags & MSG_CTRUNC)
		c->fds_lost = 1;
	c->len += (size_t)n;
	return (long)n;
}

enum wire_status chan_frame(struct chan *c, uint32_t cap, struct wire_frame *f)
{
	return wire_parse_frame(c->buf, c->len, cap, f);
}

void chan_consume(struct chan *c, size_t n)
{
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
}

void chan_shrink(struct chan *c)
{
	if (c->cap <= 2 * CHUNK || c->len > CHUNK)
		return;
	uint8_t *nb = realloc(c->buf, CHUNK);
	if (nb) {
		c->buf = nb;
		c->cap = CHUNK;
	}
}

int chan_queue(struct chan *c, const void *buf, size_t len)
{
	if (c->outcap - c->outlen < len) {
		size_t ncap = c->outcap ? c->outcap * 2 : 1024;
		while (ncap - c->outlen < len)
			ncap *= 2;
		uint8_t *nb = realloc(c->out, ncap);
		if (!nb)
			return ENOMEM;
		c->out = nb;
		c->outcap = ncap;
	}
	memcpy(c->out + c->outlen, buf, len);
	c->outlen += len;
	return 0;
}

int chan_flush(struct chan *c)
{
	size_t done = 0;
	int err = 0;

	while (done < c->outlen) {
		ssize_t n = send(c->fd, c->out + done, c->outlen - done, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				err = errno;
			break;
		}
		done += (size_t)n;
	}
	memmove(c->out, c->out + done, c->outlen - done);
	c->outlen -= done;
	return err;
}

int chan_take_fd(struct chan *c)
{
	if (c->nfds == 0)
		return -1;
	int fd = c->fds[0];
	memmove(c->fds, c->fds + 1, (c->nfds - 1) * sizeof(int));
	c->nfds--;
	return fd;
}

void chan_close_fds(struct chan *c)
{
	for (size_t i = 0; i < c->nfds; i++)
		close(c->fds[i]);
	c->nfds = 0;
}
