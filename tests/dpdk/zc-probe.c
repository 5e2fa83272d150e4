/* zc-probe.c — linked into sluiced-zc (sluiced with -Wl,--wrap=engine_sched_submit) for
 * tests/python/test_dpdk.py: at the one call where the engine takes a request's prompt, it
 * records where the prompt lies — inside a DPDK receive buffer (which one, at which offset
 * of the Ethernet frame, how that memory is registered and pinned) or elsewhere — and the
 * ids found there, then calls the real engine_sched_submit with the same pointer. The file
 * is $SLUICE_ZC_LOG, one line per request. */
#include <stdio.h>
#include <stdlib.h>

#include "dataplane.h"
#include "engine.h"

int __real_engine_sched_submit(struct engine_sched *s, const struct engine_request *req, uint32_t *retry_ms,
                               struct sl_error *err);
int __wrap_engine_sched_submit(struct engine_sched *s, const struct engine_request *req, uint32_t *retry_ms,
                               struct sl_error *err);

int __wrap_engine_sched_submit(struct engine_sched *s, const struct engine_request *req, uint32_t *retry_ms,
                               struct sl_error *err)
{
        const char *path = getenv("SLUICE_ZC_LOG");
        FILE *f = path ? fopen(path, "a") : NULL;
        if (f) {
                struct dp_dpdk_where w;
                int r = dp_dpdk_locate(req->prompt, &w);
                fprintf(f, "prompt=%p n=%u live=%d in_pool=%d buffer=%u frame_off=%u dpdk_registered=%d locked=%d "
                        "host_registered=%d device_ptr=%p ids=", (const void *)req->prompt, req->n_prompt, r == 0,
                        w.in_pool, w.buffer, w.frame_off, w.dpdk_registered, w.locked, w.host_registered, w.device_ptr);
                for (uint32_t i = 0; i < req->n_prompt && i < 64; i++)
                        fprintf(f, "%s%d", i ? "," : "", req->prompt[i]);
                fputc('\n', f);
                fclose(f);
        }
        return __real_engine_sched_submit(s, req, retry_ms, err);
}
