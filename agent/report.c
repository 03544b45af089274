/* report: the records the child writes to the agent over the report pipe (ready, error,
 * exec; see docs/protocol.md) and their parser. Writers run between clone and execve, so
 * they must never allocate or touch anything but their arguments and the stack. */
#define _GNU_SOURCE
#include "report.h"

#include <string.h>

#include "util.h"
#include "wire.h"

CHILD_CODE static void put_i32(uint8_t *p, int32_t v)
{
	uint32_t u = (uint32_t)v;

	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(u >> (8 * i));
}

CHILD_CODE int report_ready(int fd, int32_t pid)
{
	uint8_t rec[5] = { REPORT_READY };

	put_i32(rec + 1, pid);
	return write_all(fd, rec, sizeof(rec));
}

CHILD_CODE int report_error(int fd, const char *stage, int err)
{
	uint8_t rec[REPORT_MAX] = { REPORT_ERROR };
	size_t n = strlen(stage);

	if (n > 255)
		n = 255;
	put_i32(rec + 1, err);
	rec[5] = (uint8_t)n;
	memcpy(rec + 6, stage, n);
	return write_all(fd, rec, 6 + n);
}

CHILD_CODE int report_exec(int fd)
{
	return write_all(fd, "E", 1);
}

int report_parse(const uint8_t *buf, size_t len, struct report_rec *out)
{
	if (len < 1)
		return 0;
	out->kind = (char)buf[0];
	switch (out->kind) {
	case REPORT_EXEC:
		return 1;
	case REPORT_READY:
		if (len < 5)
			return 0;
		out->value = (int32_t)wire_get_u32(buf + 1);
		return 5;
	case REPORT_ERROR: {
		if (len < 6)
			return 0;
		size_t n = buf[5];
		if (len < 6 + n)
			return 0;
		out->value = (int32_t)wire_get_u32(buf + 1);
		memcpy(out->stage, buf + 6, n);
		out->stage[n] = '\0';
		return (int)(6 + n);
	}
	default:
		return -1;
	}
}
