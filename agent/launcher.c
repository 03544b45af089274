/* launcher: see launcher.h. */
#define _GNU_SOURCE
#include "launcher.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "chan.h"
#include "orphans.h"
#include "request.h"
#include "util.h"
#include "wire.h"

/* How long an agent's exit may wait to be reaped while Python is asking for agents: an
 * agent that died is reported to Python this much later at worst (it waits for the
 * report up to 2 s). */
#define REAP_DELAY_MS 50

struct agent_rec {
	pid_t pid;
	uint64_t token;
	long orphans_entry;	/* where it notes its child (orphans.h); -1: nowhere */
};

struct launcher {
	struct chan ch;
	int sfd;
	struct agent_rec *agents;
	size_t nagents, cap;
	int draining;		/* no more requests: see drain() */
	int mute;		/* Python is gone: nothing more is sent */
};

/* Done (drain), or unable to go on: agents still alive then run on unwatched. */
static _Noreturn void quit(struct launcher *l)
{
	chan_free(&l->ch);
	free(l->agents);
	exit(0);
}

static _Noreturn void drain(struct launcher *l);

/* Sending never blocks (chan_flush), so a Python that is slow to read AGENT_EXITED cannot
 * stall START_AGENT for everyone: what the socket does not take waits for POLLOUT. */
static void flush(struct launcher *l)
{
	int err = chan_flush(&l->ch);

	if (err) {
		if (err != EPIPE && err != ECONNRESET)
			diag("send", err);
		l->mute = 1;
		if (!l->draining)
			drain(l);
	}
}

static void queue(struct launcher *l, struct wire_out *o)
{
	if (l->mute)
		return;
	if (wire_end(o) < 0) {
		diag("encode", EOVERFLOW);
		return;
	}
	if (chan_queue(&l->ch, o->buf, o->len)) {
		/* dropping an AGENT_EXITED would leave a session hanging: better to go */
		diag("send queue", ENOMEM);
		quit(l);
	}
	flush(l);
}

static void launch_failed(struct launcher *l, uint64_t token, const char *stage, int err)
{
	struct wire_out o;

	wire_begin(&o, MSG_LAUNCH_FAILED);
	wire_put_u64(&o, 1, token);
	wire_put_bytes(&o, 2, stage, strlen(stage));
	wire_put_u32(&o, 3, (uint32_t)err);
	queue(l, &o);
}

static _Noreturn void become_agent(struct launcher *l, int session_fd)
{
	sigset_t none;

	/* what we inherit from the launcher is not the agent's business (its memory goes
	 * with the process: see LINX_SANITIZED) */
	close(l->sfd);
	if (LINX_SANITIZED) {
		free(l->agents);
		chan_free(&l->ch);
	}
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0) {
		diag("sigprocmask", errno);
		_exit(1);
	}
	/* dup2 onto 3 replaces the launcher socket and drops CLOEXEC */
	if (dup2(session_fd, 3) < 0) {
		diag("dup2", errno);
		_exit(1);
	}
	int err = close_fds_from(4, 0);
	if (err) {
		diag("close_range", err);
		_exit(1);
	}
	/* our entry's page, touched now while we wait as the spare: its first write is a
	 * page fault (some 5 us here), which the spawn would otherwise pay at its clone */
	orphans_note_child(0);
	int status = agent_main(3);
	if (LINX_SANITIZED)
		exit(status);
	_exit(status);
}

static void start_agent(struct launcher *l, uint64_t token, int session_fd)
{
	/* grow first: after fork there must be room to remember it */
	if (l->nagents == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 16;
		struct agent_rec *na = realloc(l->agents, ncap * sizeof(*na));
		if (!na) {
			close(session_fd);
			launch_failed(l, token, "fork", ENOMEM);
			return;
		}
		l->agents = na;
		l->cap = ncap;
	}
	long entry = orphans_claim();
	pid_t pid = fork();
	if (pid == 0)
		become_agent(l, session_fd);
	int err = errno;
	close(session_fd);
	if (pid < 0) {
		orphans_agent_gone(entry);
		launch_failed(l, token, "fork", err);
		return;
	}
	l->agents[l->nagents++] = (struct agent_rec){ pid, token, entry };
}

static void reap_agents(struct launcher *l)
{
	struct signalfd_siginfo si;

	/* drain: one read may stand for many exits, so the waitpid loop does the counting */
	while (read(l->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		;
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid == 0)
			return;
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			if (errno != ECHILD)
				diag("waitpid", errno);
			return;
		}
		size_t i = 0;
		while (i < l->nagents && l->agents[i].pid != pid)
			i++;
		if (i == l->nagents) {
			/* inherited (we are a subreaper): an orphaned workload, or what a workload
			 * left running */
			orphans_reaped(pid);
			continue;
		}
		uint64_t token = l->agents[i].token;
		orphans_agent_gone(l->agents[i].orphans_entry);
		l->agents[i] = l->agents[--l->nagents];
		/* an agent exits 0 only after its terminal frame (or once Python is gone):
		 * then nobody needs to hear of it, and Python's reactor is not woken */
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			continue;
		struct wire_out o;
		wire_begin(&o, MSG_AGENT_EXITED);
		wire_put_u64(&o, 1, token);
		if (WIFSIGNALED(st))
			wire_put_u32(&o, 3, (uint32_t)WTERMSIG(st));
		else
			wire_put_u32(&o, 2, (uint32_t)WEXITSTATUS(st));
		queue(l, &o);
	}
}

/* A START_AGENT takes exactly the fds that came with it: the channel reads one frame at a
 * time, so the FIFO holds those and no others. One fd, a stream socket, is a session to
 * fork an agent for; none, several, or one of another kind, is malformed like any other
 * bad frame (they are closed as we go). */
static void on_frame(struct launcher *l, const struct wire_frame *f)
{
	uint64_t token;

	if (f->type != MSG_START_AGENT || request_decode_start_agent(f, &token))
		drain(l);
	if (l->ch.fds_lost) {
		/* the kernel dropped the fd (MSG_CTRUNC), nearly always RLIMIT_NOFILE */
		l->ch.fds_lost = 0;
		chan_close_fds(&l->ch);
		launch_failed(l, token, "recvmsg", EMFILE);
		return;
	}
	if (l->ch.nfds != 1)
		drain(l);
	int fd = chan_take_fd(&l->ch);
	int err = stream_socket_err(fd);
	if (err) {
		/* an agent on a datagram socket would never see Python's EOF, and outlive it */
		diag("START_AGENT fd", err);
		close(fd);
		drain(l);
	}
	start_agent(l, token, fd);
}

/* Reads on until one whole frame is in (its length prefix and its body are two reads) and
 * acts on it; the next, if any, is for the next wake-up. */
static void on_channel(struct launcher *l)
{
	for (;;) {
		long n = chan_fill(&l->ch, WIRE_CAP_LAUNCHER);
		if (n == -EAGAIN)
			return;
		if (n <= 0) {
			if (n < 0 && n != -ECONNRESET)
				diag("recvmsg", (int)-n);
			drain(l);
		}
		struct wire_frame f;
		enum wire_status st = chan_frame(&l->ch, WIRE_CAP_LAUNCHER, &f);
		if (st == WIRE_SHORT)
			continue;
		if (st != WIRE_OK)
			drain(l);
		on_frame(l, &f);
		chan_consume(&l->ch, f.total);
		return;
	}
}

/* What Python sent that we will not act on (after a malformed frame), fds and all: a
 * session socket left in our queue would keep its session waiting until we exit. */
static void discard_unread(struct launcher *l)
{
	l->ch.one_frame = 0;
	do {
		chan_consume(&l->ch, l->ch.len);
		chan_close_fds(&l->ch);
	} while (chan_fill(&l->ch, WIRE_CAP_LAUNCHER) > 0);
}

/* No more requests: Python is gone (EOF, EPIPE), retired us (EOF: it shut its end for
 * writing), or broke the protocol. The agents we forked stay ours until they end, so that
 * the child of one that dies is still killed (orphans.h), and while Python reads, an
 * agent's death is still reported; then we go, once what we have to say has been taken
 * (a retired launcher's Python reads on: a report left unsent would cost a session its
 * status). Python learns that we take no more requests from a send that fails (EPIPE:
 * our end is shut for reading). */
static _Noreturn void drain(struct launcher *l)
{
	l->draining = 1;
	if (shutdown(l->ch.fd, SHUT_RD) < 0 && errno != ENOTCONN)
		diag("shutdown", errno);
	discard_unread(l);
	if (l->nagents)
		let_go_of_stderr();
	for (;;) {
		reap_agents(l);
		int out = !l->mute && l->ch.outlen;
		if (l->nagents == 0 && !out)
			quit(l);
		struct pollfd p[2] = {
			{ .fd = l->sfd, .events = POLLIN },
			{ .fd = l->ch.fd, .events = POLLOUT },
		};
		if (poll(p, out ? 2 : 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			diag("poll", errno);
			quit(l);
		}
		if (out && p[1].revents)
			flush(l);
	}
}

int launcher_main(int ctl_fd)
{
	struct launcher l;
	sigset_t chld;

	memset(&l, 0, sizeof(l));
	chan_init(&l.ch, ctl_fd);
	l.ch.one_frame = 1;
	l.sfd = -1;
	/* the Python parent may have leaked inheritable fds to us */
	int err = close_fds_from((unsigned)ctl_fd + 1, 0);
	if (err)
		diag("close_range", err);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0) {
		diag("sigprocmask", errno);
		return 1;
	}
	l.sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	if (l.sfd < 0) {
		diag("signalfd", errno);
		return 1;
	}
	/* without it, a workload that dropped its ids outlives an agent that dies: said, not
	 * fatal, since every other guarantee stands */
	if ((err = orphans_init()))
		diag("orphans", err);

	for (int busy = 0;;) {
		struct pollfd p[2] = {
			{ .fd = l.ch.fd, .events = (short)(POLLIN | (l.ch.outlen ? POLLOUT : 0)) },
			{ .fd = l.sfd, .events = POLLIN },
		};
		/* While Python asks for agents, an agent's exit waits for its next request (or
		 * REAP_DELAY_MS) to be reaped: an agent ends just as its session's outcome goes
		 * to Python, and a wake-up of ours for it then takes a CPU from the threads that
		 * carry the outcome and start the next spawn (docs/performance.md). */
		int n = poll(p, busy ? 1 : 2, busy ? REAP_DELAY_MS : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			diag("poll", errno);
			quit(&l);
		}
		busy = n > 0 && p[0].revents;
		if (l.ch.outlen && (p[0].revents & (POLLOUT | POLLERR | POLLHUP)))
			flush(&l);
		if (p[0].revents & (POLLIN | POLLERR | POLLHUP))
			on_channel(&l);
		/* every wake-up, after the request it may bring: a read and a waitpid that find
		 * nothing when no agent has ended */
		reap_agents(&l);
	}
}
