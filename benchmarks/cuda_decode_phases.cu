// cuda_decode_phases.cu - where the time of one split-KV decode step goes (attention_decode_v2.cu
// at batch 1): the kernel built with its phase stamps (SAMBA_D2_PHASES), launched on random
// bf16 caches, and per phase the spread over the blocks of the time since the block started.
//
// Build and run on a machine with an sm_90 GPU (from the repository root):
//   nvcc -O3 -std=c++17 -arch=sm_90 -DSAMBA_D2_PHASES -Icsrc/cuda -Icsrc \
//       benchmarks/cuda_decode_phases.cu csrc/cuda/runtime.cu csrc/cuda/pdl.cu -lcublas \
//       -o build/cuda_decode_phases
//   build/cuda_decode_phases [capacity ...]        (default 4096 16384 32768)
// For each capacity (32 query heads and 4 kv heads, or PROBE_HEADS="H,HKV"; head dim 64; a full
// cache): the time of one launch in a CUDA graph of 20 over rotating caches (at least 256 MiB in
// all, so that the caches come from memory, not L2, as in benchmarks/gpu_attention.py; CUDA
// events, median of 9 replays; the stamps' stores included), then, from one more launch on a
// cache evicted from L2 by writing a 256 MiB buffer, per stamp: the median and largest time
// since the block's first stamp (SM clock cycles converted with the device's clock rate), and
// the span from the first block's start to the last block's end (global timer, ns).
// Stamps (attention_decode_v2.cu):
//   0 entry, 1 after the dependent-launch wait, 2 pos and n_valid loaded, 3 the first K/V tile
//   and Q in shared memory, 4 all tiles done, 5 the warps' states published, 6 slot written
//   and arrival counted (blocks that share a row), 7 the segment done (the combine included);
//   in the combine (the row's last block): 8 after the merge weights, 9 after the weighted sums.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attention_decode_v2.cu"

// attn_decode_v2_applicable (not called here) refers to these; the probe always runs sm_90.
int attn_tensor_cores_ok(void) { return 1; }
size_t attn_smem_optin(void) { return 227 * 1024; }

#define CK(x)                                                                      \
    do {                                                                           \
        cudaError_t e_ = (x);                                                      \
        if (e_ != cudaSuccess) {                                                   \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,              \
                    cudaGetErrorString(e_));                                       \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

__global__ void fill_kernel(__nv_bfloat16 *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 13;
        x *= 0x5bd1e995u;
        x ^= x >> 15;
        p[i] = __float2bfloat16((float)(x & 0xffff) / 65536.0f - 0.5f);
    }
}

static int64_t H = 32, HKV = 4;  // PROBE_HEADS="H,HKV" sets them

static int run(int64_t cap) {
    const int64_t HD = 64, B = 1;
    const size_t ncache = (size_t)B * cap * HKV * HD, nq = (size_t)B * H * HD;
    const size_t flush_bytes = (size_t)256 << 20;
    const int R = (int)std::max<size_t>(2, flush_bytes / (4 * ncache) + 1);  // K and V copies
    __nv_bfloat16 *q, *kv, *out;
    unsigned char *flush;
    int64_t *pos, *nvalid;
    CK(cudaMalloc(&q, nq * 2));
    CK(cudaMalloc(&out, nq * 2));
    CK(cudaMalloc(&kv, 2 * R * ncache * 2));
    CK(cudaMalloc(&flush, flush_bytes));
    CK(cudaMalloc(&pos, 8));
    CK(cudaMalloc(&nvalid, 8));
    fill_kernel<<<512, 256>>>(q, nq, 1u);
    fill_kernel<<<512, 256>>>(kv, 2 * R * ncache, 2u);
    const int64_t hp = cap - 1, hn = cap;  // a full cache, newest in the last slot
    CK(cudaMemcpy(pos, &hp, 8, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(nvalid, &hn, 8, cudaMemcpyHostToDevice));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    samba_cu_ref rq{q, SAMBA_CU_BF16}, ro{out, SAMBA_CU_BF16}, rp{pos, SAMBA_CU_I64},
        rn{nvalid, SAMBA_CU_I64};
    auto launch = [&](int i) {
        samba_cu_ref rk{kv + (size_t)(2 * (i % R)) * ncache, SAMBA_CU_BF16},
            rv{kv + (size_t)(2 * (i % R) + 1) * ncache, SAMBA_CU_BF16};
        int taken = 0;
        if (attn_decode_v2(B, H, HKV, HD, cap, rq, rk, rv, rp, rn, 0.125f, ro, st, &taken) !=
                SAMBA_OK ||
            !taken) {
            fprintf(stderr, "attn_decode_v2 did not run: %s\n", samba_cuda_last_error());
            exit(1);
        }
    };
    for (int i = 0; i < 5; ++i) launch(i);  // workspace allocated outside the capture
    CK(cudaStreamSynchronize(st));

    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < 20; ++i) launch(i);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int r = 0; r < 10; ++r) {
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (r > 0) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double us_per = ms[ms.size() / 2] * 1000.0 / 20;

    static unsigned long long zero[D2_MAX_BLOCKS][D2_NSTAMPS][2];
    CK(cudaMemcpyToSymbol(d2_stamps, zero, sizeof zero));
    CK(cudaMemsetAsync(flush, 1, flush_bytes, st));
    launch(R - 1);
    CK(cudaStreamSynchronize(st));
    static unsigned long long s[D2_MAX_BLOCKS][D2_NSTAMPS][2];
    CK(cudaMemcpyFromSymbol(s, d2_stamps, sizeof s));
    int dev = 0, khz = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
    const int nblk = d2_grid_blocks<__nv_bfloat16, D2_64>();
    const int64_t tpr = cdiv(cap, D2_64::BT);
    const int64_t used = d2_aligned_blocks(B * HKV, tpr, std::min<int64_t>(nblk, B * HKV * tpr));

    printf("\ncapacity %lld: %lld blocks, %.1f us per launch (graph of 20, %d caches)\n",
           (long long)cap, (long long)used, us_per, R);
    printf("| stamp | blocks | median us | max us |\n|---|---|---|---|\n");
    unsigned long long gmin = ~0ull, gmax = 0;
    for (int i = 0; i < D2_NSTAMPS; ++i) {
        std::vector<double> d;
        for (int64_t b = 0; b < used; ++b) {
            if (s[b][0][0] == 0 || s[b][i][0] == 0) continue;
            d.push_back((double)(s[b][i][0] - s[b][0][0]) * 1000.0 / khz);
            if (i == 0) gmin = std::min(gmin, s[b][0][1]);
            gmax = std::max(gmax, s[b][i][1]);
        }
        if (d.empty()) {
            printf("| %d | 0 | - | - |\n", i);
            continue;
        }
        std::sort(d.begin(), d.end());
        printf("| %d | %zu | %.2f | %.2f |\n", i, d.size(), d[d.size() / 2], d.back());
    }
    {  // the blocks that combined a row (stamps 8 and 9): their own times, median over them
        std::vector<double> c[4];
        const int idx[4] = {6, 8, 9, 7};
        for (int64_t b = 0; b < used; ++b) {
            if (s[b][0][0] == 0 || s[b][8][0] == 0) continue;
            for (int k = 0; k < 4; ++k)
                c[k].push_back((double)(s[b][idx[k]][0] - s[b][0][0]) * 1000.0 / khz);
        }
        if (!c[0].empty()) {
            for (auto &v : c) std::sort(v.begin(), v.end());
            const size_t m = c[0].size() / 2;
            printf("combining blocks (%zu): arrival %.2f, weights %.2f, sums %.2f, done %.2f us\n",
                   c[0].size(), c[0][m], c[1][m], c[2][m], c[3][m]);
        }
    }
    std::vector<double> starts;
    for (int64_t b = 0; b < used; ++b)
        if (s[b][0][1]) starts.push_back((double)(s[b][0][1] - gmin) / 1000.0);
    std::sort(starts.begin(), starts.end());
    if (starts.empty()) {
        fprintf(stderr, "no stamps recorded (built without -DSAMBA_D2_PHASES?)\n");
        exit(1);
    }
    printf("first block start to last stamp: %.2f us (global timer); block starts: median %.2f, "
           "max %.2f us after the first\n",
           (double)(gmax - gmin) / 1000.0, starts[starts.size() / 2], starts.back());
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    cudaFree(q);
    cudaFree(out);
    cudaFree(kv);
    cudaFree(flush);
    cudaFree(pos);
    cudaFree(nvalid);
    return 0;
}

int main(int argc, char **argv) {
    std::vector<int64_t> caps;
    for (int i = 1; i < argc; ++i) caps.push_back(atoll(argv[i]));
    if (caps.empty()) caps = {4096, 16384, 32768};
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    const char *hs = getenv("PROBE_HEADS");
    if (hs && (sscanf(hs, "%lld,%lld", (long long *)&H, (long long *)&HKV) != 2 || HKV < 1 ||
               H < HKV || H % HKV || H / HKV > 8)) {
        fprintf(stderr, "PROBE_HEADS=%s: expected H,HKV with HKV | H and H / HKV <= 8\n", hs);
        return 1;
    }
    printf("device: %s, %d SMs, %lld query heads, %lld kv heads\n", p.name, p.multiProcessorCount,
           (long long)H, (long long)HKV);
    for (int64_t c : caps) run(c);
    return 0;
}
