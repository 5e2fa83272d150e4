/* fault_inject.cu — linked into sluiced-gpufault (sluiced with -Wl,--wrap=ecu_step_launch)
 * for tests/gpu/fault_test.py: a GPU failure on demand while serving. Every step the
 * scheduler launches passes here; once SLUICE_FAULT_AFTER_STEPS steps have gone through
 * (unset: never) and the step samples at least SLUICE_FAULT_MIN_ROWS rows (default 1), a
 * kernel that executes __trap() runs on a stream of its own. A trap kills the whole CUDA
 * context: a sticky error that the backend then meets on its own stream. The step itself is
 * launched as usual afterwards.
 *   SLUICE_FAULT_MODE=trap       (default) the trap runs alongside the step: the backend sees
 *                                the error where it next looks, normally ecu_step_wait()
 *   SLUICE_FAULT_MODE=trap-sync  the trap is waited for first: the launch itself fails
 * One line on stderr (the daemon's log) says when it fired. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "cuda/ecu.h"

extern "C" int __real_ecu_step_launch(struct ecu_ctx *c, const struct engine_kv *kv,
                                      const struct ecu_step_args *a, struct sl_error *err);
extern "C" int __wrap_ecu_step_launch(struct ecu_ctx *c, const struct engine_kv *kv,
                                      const struct ecu_step_args *a, struct sl_error *err);

__global__ void fault_trap_kernel(void)
{
        __trap();
}

static unsigned long long env_ull(const char *name, unsigned long long dflt)
{
        const char *v = getenv(name);
        return v && v[0] ? strtoull(v, NULL, 10) : dflt;
}

static void fault_fire(unsigned long long step, const struct ecu_step_args *a, bool sync)
{
        cudaStream_t st;
        cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
        if (e == cudaSuccess) {
                fault_trap_kernel<<<1, 1, 0, st>>>();
                e = cudaGetLastError(); /* ours: the backend must not see a launch error of ours */
        }
        fprintf(stderr, "fault-inject: step %llu (%u tokens, %u rows): trap kernel %s (%s)\n", step,
                a->b->n_tokens, a->n_rows, e == cudaSuccess ? "launched" : "NOT launched",
                cudaGetErrorString(e));
        if (e == cudaSuccess && sync) {
                e = cudaStreamSynchronize(st);
                fprintf(stderr, "fault-inject: the trap ended: %s\n", cudaGetErrorString(e));
        }
        fflush(stderr);
        /* the stream is left as it is: the context it belongs to is gone */
}

extern "C" int __wrap_ecu_step_launch(struct ecu_ctx *c, const struct engine_kv *kv,
                                      const struct ecu_step_args *a, struct sl_error *err)
{
        /* the scheduler launches its steps from the one engine thread: plain statics */
        static bool init, fired;
        static unsigned long long after, min_rows, n;
        static bool sync;
        if (!init) {
                const char *m = getenv("SLUICE_FAULT_MODE");
                after = env_ull("SLUICE_FAULT_AFTER_STEPS", ~0ull);
                min_rows = env_ull("SLUICE_FAULT_MIN_ROWS", 1);
                sync = m && !strcmp(m, "trap-sync");
                if (m && m[0] && !sync && strcmp(m, "trap")) {
                        fprintf(stderr, "fault-inject: SLUICE_FAULT_MODE=%s unknown (trap, trap-sync): off\n",
                                m);
                        fired = true;
                }
                init = true;
        }
        if (!fired && n++ >= after && a->n_rows >= min_rows) {
                fired = true;
                fault_fire(n, a, sync);
        }
        return __real_ecu_step_launch(c, kv, a, err);
}
