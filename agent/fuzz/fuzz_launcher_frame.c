/* fuzz_launcher_frame: libFuzzer harness for the launcher's side of the wire: a byte
 * stream cut into frames under the 4 KiB cap and START_AGENT decoded, the way launcher.c
 * does; plus an encode/parse round trip of its replies and the child report parser.
 * Must never do I/O. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"
#include "request.h"
#include "wire.h"

static void check(int ok)
{
	if (!ok)
		abort();
}

static void round_trip(const uint8_t *data, size_t size)
{
	struct wire_out o;
	struct wire_frame f;
	uint64_t token = 0;
	size_t slen = size > 300 ? 300 : size;	/* past WIRE_OUT_MAX: must refuse, not overflow */

	if (size >= 8)
		token = wire_get_u64(data);
	wire_begin(&o, MSG_LAUNCH_FAILED);
	wire_put_u64(&o, 1, token);
	wire_put_bytes(&o, 2, data, slen);
	wire_put_u32(&o, 3, (uint32_t)size);
	if (wire_end(&o) < 0) {
		check(slen > WIRE_OUT_MAX - 40);
		return;
	}
	check(wire_parse_frame(o.buf, o.len, WIRE_CAP_LAUNCHER, &f) == WIRE_OK);
	check(f.type == MSG_LAUNCH_FAILED && f.total == o.len);
	uint64_t back;
	check(request_decode_start_agent(&f, &back) == 0 && back == token);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;

	for (;;) {
		struct wire_frame f;
		uint64_t token;
		enum wire_status st = wire_parse_frame(data + off, size - off, WIRE_CAP_LAUNCHER, &f);
		if (st != WIRE_OK)
			break;
		check(f.total >= WIRE_HDR + 2 && f.total <= size - off);
		check(f.total <= WIRE_HDR + WIRE_CAP_LAUNCHER);
		if (f.type != MSG_START_AGENT)
			break;
		if (request_decode_start_agent(&f, &token))
			break;
		off += f.total;
	}

	struct report_rec rec;
	size_t roff = 0;
	int n;
	while (roff < size && (n = report_parse(data + roff, size - roff, &rec)) > 0) {
		check((size_t)n <= size - roff);
		if (rec.kind == REPORT_ERROR)
			check(strlen(rec.stage) < sizeof(rec.stage));
		roff += (size_t)n;
	}

	round_trip(data, size);
	return 0;
}
