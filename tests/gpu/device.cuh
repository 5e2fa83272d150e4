/* device.cuh — what every GPU test and benchmark binary shares beyond the kernels: finding
 * the GPU (or saying SKIP) and timing a captured graph. */
#pragma once

#include <stdio.h>

#include <algorithm>
#include <vector>

#include <cuda_runtime.h>

#include "common.cuh"

/* One replay of ge, in ms: the median of reps timed replays after warm untimed ones. */
static double graph_median_ms(cudaGraphExec_t ge, cudaStream_t st, int warm, int reps)
{
        cudaEvent_t e0, e1;
        CUDA_CHECK_ABORT(cudaEventCreate(&e0));
        CUDA_CHECK_ABORT(cudaEventCreate(&e1));
        for (int i = 0; i < warm; i++)
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
        std::vector<float> ms(reps);
        for (int i = 0; i < reps; i++) {
                CUDA_CHECK_ABORT(cudaEventRecord(e0, st));
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
                CUDA_CHECK_ABORT(cudaEventRecord(e1, st));
                CUDA_CHECK_ABORT(cudaEventSynchronize(e1));
                CUDA_CHECK_ABORT(cudaEventElapsedTime(&ms[i], e0, e1));
        }
        std::sort(ms.begin(), ms.end());
        CUDA_CHECK_ABORT(cudaEventDestroy(e0));
        CUDA_CHECK_ABORT(cudaEventDestroy(e1));
        return ms[reps / 2];
}

/* GPU 0's properties and the driver and runtime versions, after printing what it is (extra
 * appended to the line); false when there is none (the test then exits 77). */
static bool device_open(cudaDeviceProp *prop, int *drv, int *rt, const char *extra = "")
{
        int ndev = 0;
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
                printf("SKIP: no CUDA device\n");
                return false;
        }
        CUDA_CHECK_ABORT(cudaGetDeviceProperties(prop, 0));
        CUDA_CHECK_ABORT(cudaDriverGetVersion(drv));
        CUDA_CHECK_ABORT(cudaRuntimeGetVersion(rt));
        printf("device %s, sm_%d%d, %d SMs, L2 %d MB, %.1f GB, driver %d runtime %d%s\n", prop->name, prop->major,
               prop->minor, prop->multiProcessorCount, prop->l2CacheSize >> 20, prop->totalGlobalMem / 1e9, *drv, *rt,
               extra);
        return true;
}
