// Batched sparse decode attention over the token-major bitmap KV format ("TBM", see kernel/format.py).
//
// Design (flash-decoding over compressed tokens, one read of each KV head's data for all G query heads):
//   grid (num_splits + 1, H, B), 128 threads (4 warps). Split blocks s < num_splits each handle one contiguous
//   slice of the row's compressed tokens [comp_start, comp_end); block s == num_splits handles the dense window.
//   Launch order (block_coords): blockIdx = (s, h, b), or, where the grid overflows one wave of block slots,
//   all split blocks first and the short window blocks last (KParams::win_last).
//   A block streams its tokens in tiles of 64 (16 per warp) or, on the bulk-copy fast path where two such stages fit,
//   128 (two 16-token sub-tiles per warp) through shared memory (2-4 stages): the tile's bitmaps,
//   offsets (variable mode) and its contiguous value run (fixed mode k % 4 != 0 and variable mode: an exact
//   16-byte-chunk image; fixed mode k % 4 == 0 with layout 2: one padded row per token). The fast path (both sides
//   fixed-k images, the cache's layout) stages with straight-line cp.async code, or on sm_90 with 3+ stages with
//   bulk copies (cp.async.bulk + one mbarrier per stage); with k % 16 == 0 (head_dim 128) token runs are staged 16
//   bytes apart, which spreads the gathers over the shared-memory banks. The fast path and the general one (other
//   layouts; the window block where its rows are not contiguous or do not fit a stage) are separate compile-time
//   instances of the main loop. In FAST kernels the window block normally takes the fast path too: its dense rows
//   are staged as a k = D image with all-ones bitmaps (KParams::win_fast).
//   Each warp then builds a per-token table of value positions (a popcount prefix per 16/8 channels) and
//   gathers values straight into tensor-core fragments, mma.m16n8k16 with fp32 accumulators:
//     S^T = K Q^T with M = the warp's 16 tokens, N = 8 query heads (two n8 blocks when G > 8), and
//     O^T += V^T P^T with M = 16 channels, N = the heads; P^T comes from the S^T accumulators by an 8x8 transpose
//   (movmatrix). The channel order inside the Q.K contraction is permuted per lane quad (lane quad q owns a
//   contiguous channel range), so a lane's fragment registers come from one bitmap word; Q carries the same
//   permutation. A gather is a bit test whose masked word is the value register, then a predicated 2-byte load
//   (no zeroing moves). Head_dim 64 with k = 32 maps the warp's tokens to the mma rows in a permuted order
//   (kFPermTok, against bank conflicts of 64-byte value runs).
//   Online softmax in the log2 domain with a lazy running max (raised only when a score exceeds it by more than 8);
//   the 4 warps merge in shared memory; each block writes one partial
//   (O, log-sum-exp). The last block of a row to finish (per-row arrival counter, reset by that block, so no
//   memset and CUDA-graph capturable) combines the partials and writes out (and lse, natural log). A separate
//   merge kernel (same arithmetic, bitwise-equal results) is used only where no counter buffer can be had.
//   Where the grid fits one wave with a block slot to spare, every fourth split block that is not its row's last runs
//   the merge dry (same code, one-word loads, no stores) to fetch the merge code before the last block needs it
//   (KParams::warm_merge).
//   bf16: P is split into hi + lo bf16 parts (two mmas) so P keeps ~16 bits of precision.
#include "sparse_decode.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>  // host printf of the MUSTAFAR_TRACE measurement build's records
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace mustafar {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;          // tokens per block iteration (16 per warp); the TB = 128 kernels take two such
                                   // sub-tiles per stage (see split_kernel)
constexpr int kTableBytes = kWarps * 32 * 16;
constexpr int kSlackBytes = 32;    // after each value buffer: the branch-free gathers read one past the end
template <bool B>
struct BoolC {  // compile-time flag argument of a generic lambda
  static constexpr bool value = B;
};

struct SideArgs {
  const char* vals;
  int64_t v_sb, v_sh, nvals;
  const int32_t* bm;
  int64_t bm_sb, bm_sh, bm_st;
  const int32_t* off;
  int64_t off_sb, off_sh, off_st;
  int mode;    // 0 fixed natural image, 1 fixed padded rows, 2 variable
  int k;
  int bm_vec;  // bitmap rows can be copied with one W*4-byte cp.async per token
  uint32_t cpt_magic;  // skewed runs (KParams::fflags): ceil(2^32 / (k / 8)), chunk -> token by __umulhi
  int capH;    // stage capacity (halves) of this side's value buffer
};

// KParams::fflags (fast path, set by the host): both sides' bitmap rows contiguous (token stride D/32 words) with
// 16-byte aligned (b, h) bases, so a tile's rows can go as one bulk copy (8-byte rows: where the block's first token
// is even); K / V token runs skewed (skew_side).
constexpr int kFBmBulk = 1, kFSkewK = 2, kFSkewV = 4;
// kFPermTok (any block): the warp's 16 tokens are mapped to the mma rows / P^T columns in the order
// perm_tok(j) = (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1) (0 2 1 3 within each group of 4), so that the first value
// load of each V pair reads tokens of both parities. Set for head_dim 64 with k = 32 on the V side: 64-byte value runs
// start in bank 0 for even and bank 16 for odd tokens, and in natural order each V load read four tokens of one
// parity (4-way conflicts). scripts/bank_conflict_sim.py: V gather wavefronts per 16-token tile 88 -> 61 (K side
// unchanged; other k within +-3 %).
constexpr int kFPermTok = 8;
// (the callers pass p.fflags & kFPermTok at each use: hoisting it into a variable made ptxas spill 4-12 B in two
// head_dim-64 kernels)
__device__ __forceinline__ int perm_tok(int j, bool on) { return on ? ((j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1)) : j; }

struct WinArgs {
  const char* data;
  int64_t sb, sh, st;
};

struct KParams {
  int B, H, G, T, n_win, nsplit, ns, win_tile, win_last;
  int win_fast;  // FAST kernels: the window blocks run the fast path too (dense rows as k = D images, all-ones bitmaps)
  int warm_merge;  // blocks that are not their row's last run the merge dry (see merge_row)
  float scale_log2;
  const char* q;
  int64_t q_sb, q_sh;
  char* out;
  int64_t o_sb, o_sh;
  float* lse;
  float* part_o;
  float* part_lse;
  int* counters;      // [B*H] arrival counters (zero between launches), or nullptr: separate merge kernel
  const int32_t* comp_start;
  const int32_t* comp_end;
  const int32_t* win_start;
  SideArgs side[2];
  WinArgs win[2];
  int stage_bytes;
  int fflags;  // fast path: kFBmBulk, kFSkewK, kFSkewV; any path: kFPermTok
  int trace_on;    // MUSTAFAR_TRACE builds: this launch prints its block phase times
  int vals_off[2], bm_off[2], offs_off[2];
  int info_off, table_off;
};

// ------------------------------------------------------------------------------------------------
// Small device helpers
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16_full(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async8_full(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async4_full(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void cp_async_wait_stages(int ns) {  // allow ns - 2 groups in flight
  if (ns <= 2) cp_async_wait<0>();
  else if (ns == 3) cp_async_wait<1>();
  else cp_async_wait<2>();
}

// sm_90 bulk copies (TMA engine, no tensor map): one instruction moves a contiguous run global -> shared and
// signals an mbarrier with its byte count. MUSTAFAR_BULK is 1 in the sm_90 device pass only; elsewhere the fast
// path stages with cp.async as before.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(MUSTAFAR_NO_BULK)
#define MUSTAFAR_BULK 1
#else
#define MUSTAFAR_BULK 0
#endif
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#if MUSTAFAR_BULK
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_init_fence() {
#if MUSTAFAR_BULK
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if MUSTAFAR_BULK
  uint32_t done = 0;
  do {
    asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done);
#endif
}
#if MUSTAFAR_BULK
__device__ __forceinline__ void mbar_arrive_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
#endif

template <bool BF16>
__device__ __forceinline__ void mma16816(float& d0, float& d1, float& d2, float& d3, uint32_t a0, uint32_t a1,
                                         uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  if constexpr (BF16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (BF16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}
// Residual of pack2 (bf16 only): (a, b) - float(pack2(a, b)) rounded to bf16.
__device__ __forceinline__ uint32_t pack2_bf16_lo(float a, float b, uint32_t hi) {
  const float ha = __uint_as_float(hi << 16), hb = __uint_as_float(hi & 0xffff0000u);
  return pack2<true>(a - ha, b - hb);
}

template <bool BF16>
__device__ __forceinline__ void store_out(char* base, float v) {
  if constexpr (BF16) *reinterpret_cast<__nv_bfloat16*>(base) = __float2bfloat16_rn(v);
  else *reinterpret_cast<__half*>(base) = __float2half_rn(v);
}

// Bit tests of a gathered pair: p0 / p1 = (mask & bit) != 0. With MUSTAFAR_ZERO_FROM_TEST (default) the masked word
// itself is the value register: it is 0 exactly where the predicated load below does not run, so a dropped channel
// needs no zeroing move (ptxas fuses the AND and the test into one LOP3 with both a predicate and a register result).
// H100, same run, two rounds: SmolLM2 B=32 L=32768 70 % 150.4-150.9 -> 141.7-142.7 us, B=8 L=32768 47.7-48.0 -> 45.9-46.0,
// Llama-3-8B B=32 L=8192 70 % 171.5-172.0 -> 169.3-170.3 (=0: explicit zeroing moves, as before).
#ifndef MUSTAFAR_ZERO_FROM_TEST
#define MUSTAFAR_ZERO_FROM_TEST 1
#endif
#if MUSTAFAR_ZERO_FROM_TEST
#define MUSTAFAR_TEST_ASM(M0, B0, M1, B1)                                          \
  "and.b32 v0, " M0 ", " B0 ";\n\tsetp.ne.u32 p0, v0, 0;\n\t"                 \
  "and.b32 v1, " M1 ", " B1 ";\n\tsetp.ne.u32 p1, v1, 0;\n\t"
#else
#define MUSTAFAR_TEST_ASM(M0, B0, M1, B1)                                          \
  ".reg .b32 t0, t1;\n\t"                                                     \
  "and.b32 t0, " M0 ", " B0 ";\n\tsetp.ne.u32 p0, t0, 0;\n\t"                 \
  "and.b32 t1, " M1 ", " B1 ";\n\tsetp.ne.u32 p1, t1, 0;\n\t"                 \
  "mov.b32 v0, 0;\n\tmov.b32 v1, 0;\n\t"
#endif
// A gathered pair is packed as v1 * 65536 + v0 with IMAD (FMA pipe; PRMT on the busier ALU pipe was ~1 % slower).
#define MUSTAFAR_PACK_ASM "mad.lo.u32 %0, v1, 65536, v0;\n\t}"
// Value gathers. A lane walks one token region channel by channel, keeping a running shared-memory position that
// advances only on kept channels. Written in PTX with explicit predicates (no branches):
//   PRED (default): per channel LOP3.P (its register result is 0 where the channel is dropped) + predicated LDS.U16
//                   into that register + predicated IADD; lanes whose channel is dropped issue no shared-memory access
//                   (fewer bank-conflict wavefronts).
//   !PRED:          unconditional LDS.U16 + SEL (the value buffers carry slack after the last value).
// One IMAD packs each pair.
template <uint32_t BIT, bool PRED>
__device__ __forceinline__ uint32_t gather_two(uint32_t m, uint32_t& addr) {  // channels BIT, BIT << 1
  uint32_t out;
  if constexpr (PRED) {
    asm volatile(
        "{\n\t.reg .pred p0, p1;\n\t.reg .b32 v0, v1;\n\t"
        MUSTAFAR_TEST_ASM("%2", "%3", "%2", "%4")
        "@p0 ld.shared.u16 v0, [%1];\n\t@p0 add.u32 %1, %1, 2;\n\t"
        "@p1 ld.shared.u16 v1, [%1];\n\t@p1 add.u32 %1, %1, 2;\n\t"
        MUSTAFAR_PACK_ASM
        : "=r"(out), "+r"(addr)
        : "r"(m), "n"(BIT), "n"(BIT << 1));
  } else {
    asm volatile(
        "{\n\t.reg .pred p0, p1;\n\t.reg .b32 t0, t1, v0, v1;\n\t"
        "and.b32 t0, %2, %3;\n\tsetp.ne.u32 p0, t0, 0;\n\t"
        "and.b32 t1, %2, %4;\n\tsetp.ne.u32 p1, t1, 0;\n\t"
        "ld.shared.u16 v0, [%1];\n\t@p0 add.u32 %1, %1, 2;\n\t"
        "ld.shared.u16 v1, [%1];\n\t@p1 add.u32 %1, %1, 2;\n\t"
        "selp.b32 v0, v0, 0, p0;\n\tselp.b32 v1, v1, 0, p1;\n\t"
        MUSTAFAR_PACK_ASM
        : "=r"(out), "+r"(addr)
        : "r"(m), "n"(BIT), "n"(BIT << 1));
  }
  return out;
}
template <uint32_t BIT, bool PRED>
__device__ __forceinline__ uint32_t gather_cross(uint32_t ma, uint32_t& aa, uint32_t mb, uint32_t& ab) {
  uint32_t out;  // (channel BIT of token a, channel BIT of token b)
  if constexpr (PRED) {
    asm volatile(
        "{\n\t.reg .pred p0, p1;\n\t.reg .b32 v0, v1;\n\t"
        MUSTAFAR_TEST_ASM("%3", "%5", "%4", "%5")
        "@p0 ld.shared.u16 v0, [%1];\n\t@p0 add.u32 %1, %1, 2;\n\t"
        "@p1 ld.shared.u16 v1, [%2];\n\t@p1 add.u32 %2, %2, 2;\n\t"
        MUSTAFAR_PACK_ASM
        : "=r"(out), "+r"(aa), "+r"(ab)
        : "r"(ma), "r"(mb), "n"(BIT));
  } else {
    asm volatile(
        "{\n\t.reg .pred p0, p1;\n\t.reg .b32 t0, t1, v0, v1;\n\t"
        "and.b32 t0, %3, %5;\n\tsetp.ne.u32 p0, t0, 0;\n\t"
        "and.b32 t1, %4, %5;\n\tsetp.ne.u32 p1, t1, 0;\n\t"
        "ld.shared.u16 v0, [%1];\n\t@p0 add.u32 %1, %1, 2;\n\t"
        "ld.shared.u16 v1, [%2];\n\t@p1 add.u32 %2, %2, 2;\n\t"
        "selp.b32 v0, v0, 0, p0;\n\tselp.b32 v1, v1, 0, p1;\n\t"
        MUSTAFAR_PACK_ASM
        : "=r"(out), "+r"(aa), "+r"(ab)
        : "r"(ma), "r"(mb), "n"(BIT));
  }
  return out;
}
template <int I, int N, bool PRED>
struct Gather {
  // out[i/2] packs channels i (low) and i+1 (high) of one region of N channels
  static __device__ __forceinline__ void token(uint32_t m, uint32_t addr, uint32_t* out) {
    if constexpr (I < N) {
      out[I / 2] = gather_two<(1u << I), PRED>(m, addr);
      Gather<I + 2, N, PRED>::token(m, addr, out);
    }
  }
  // out[i] = (channel i of token a, channel i of token b)
  static __device__ __forceinline__ void pair(uint32_t ma, uint32_t aa, uint32_t mb, uint32_t ab, uint32_t* out) {
    if constexpr (I < N) {
      out[I] = gather_cross<(1u << I), PRED>(ma, aa, mb, ab);
      Gather<I + 1, N, PRED>::pair(ma, aa, mb, ab, out);
    }
  }
};

// Online-softmax update (log2 domain) of one n8 head block of the S^T tile (rows = the warp's 16 tokens, columns =
// 8 query heads). Lane (gq, q4) holds tokens gq (sc[0], sc[1]) and gq + 8 (sc[2], sc[3]) of heads 2 q4 (sc[0], sc[2])
// and 2 q4 + 1 (sc[1], sc[3]); m[c], l[c] are the running max and (lane-partial) sum of head 2 q4 + c, and
// oacc[mb][c], oacc[mb][2 + c] the matching O^T accumulators (rescaled when a max moved in any lane).
// sc (scaled scores, -inf for tokens past the end) is replaced by the probabilities. m starts at kMaxInit (finite),
// so no max is ever -inf. Lazy max (MUSTAFAR_LAZY_MAX): the max is raised, across the warp, only when some lane
// holds a score above the running max + kLazyTau; otherwise the probabilities are taken against the running max as
// it is (at most 2^kLazyTau, exact in fp16 / the bf16 hi + lo split), which skips the shuffle reduction, the two
// rescale exponentials and the O^T rescale on almost every sub-tile. Any reference max gives the same result: the
// final output is O / l and the partial's lse is m + log2(l).
#ifndef MUSTAFAR_LAZY_MAX
#define MUSTAFAR_LAZY_MAX 1
#endif
#ifndef MUSTAFAR_LAZY_TAU
#define MUSTAFAR_LAZY_TAU 8.0f
#endif
constexpr float kLazyTau = MUSTAFAR_LAZY_TAU;
constexpr float kMaxInit = -1e30f;  // start of the running max (finite: no -inf guards in the update)
template <int NMB>
__device__ __forceinline__ void online_softmax_cols(float (&sc)[4], float (&m)[2], float (&l)[2],
                                                    float (&oacc)[NMB][4]) {
  float mx0 = fmaxf(sc[0], sc[2]), mx1 = fmaxf(sc[1], sc[3]);
#if MUSTAFAR_LAZY_MAX
  if (__any_sync(0xffffffffu, (mx0 > m[0] + kLazyTau) || (mx1 > m[1] + kLazyTau)))
#endif
  {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
    }
    const float mn0 = fmaxf(m[0], mx0), mn1 = fmaxf(m[1], mx1);
    const float al0 = exp2f(m[0] - mn0), al1 = exp2f(m[1] - mn1);
    m[0] = mn0;
    m[1] = mn1;
    l[0] *= al0;
    l[1] *= al1;
    if (__any_sync(0xffffffffu, (al0 != 1.f) || (al1 != 1.f))) {
#pragma unroll
      for (int mb = 0; mb < NMB; ++mb) {
        oacc[mb][0] *= al0;
        oacc[mb][2] *= al0;
        oacc[mb][1] *= al1;
        oacc[mb][3] *= al1;
      }
    }
  }
  sc[0] = exp2f(sc[0] - m[0]);
  sc[2] = exp2f(sc[2] - m[0]);
  sc[1] = exp2f(sc[1] - m[1]);
  sc[3] = exp2f(sc[3] - m[1]);
  l[0] += sc[0] + sc[2];
  l[1] += sc[1] + sc[3];
}

// 8x8 transpose of a b16 fragment (lane: row gq, columns 2 q4, 2 q4 + 1) within the warp.
__device__ __forceinline__ uint32_t movm_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Per-block runtime description of one side (compressed K/V or the dense window K/V).
struct SideRT {
  const char* vals;
  const int32_t* bm;
  const int32_t* off;
  int64_t bm_st, off_st, src_st_w, nvals;
  int mode, k, kst, wpt, tpi, capH;
  bool synth, bm_vec;
  uint32_t cpt_magic;
};

// Issues the cp.async copies of one side of one tile; returns the value-position info of the tile
// (fixed natural: shift of the image; variable: run start - shift; padded rows: 0).
template <int D>
__device__ __forceinline__ int stage_side(const SideRT& sd, int tid, int t0, int nt, int tile_n, unsigned char* sv,
                                          int32_t* sbm, int32_t* soff, int64_t v0, int64_t v1) {
  constexpr int W = D / 32;
  if (sd.synth) {
    for (int i = tid; i < tile_n * W; i += kThreads) sbm[i] = (i / W < nt) ? -1 : 0;
  } else if (sd.bm_vec) {
    for (int t = tid; t < tile_n; t += kThreads) {
      if (t < nt) {
        const int32_t* src = sd.bm + (int64_t)(t0 + t) * sd.bm_st;
        if constexpr (W == 4) cp_async16_full(sbm + t * W, src);
        else cp_async8_full(sbm + t * W, src);
      } else {
#pragma unroll
        for (int w = 0; w < W; ++w) sbm[t * W + w] = 0;
      }
    }
  } else {
    for (int i = tid; i < tile_n * W; i += kThreads) {
      const int t = i / W, w = i % W;
      if (t < nt) cp_async4_full(sbm + i, sd.bm + (int64_t)(t0 + t) * sd.bm_st + w);
      else sbm[i] = 0;
    }
  }
  if (sd.mode == 1) {
    const int my_t = tid / sd.wpt, my_w = tid - my_t * sd.wpt;
    if (my_t < sd.tpi) {
      const int ws = sd.wpt + 1;
      for (int t = my_t; t < nt; t += sd.tpi)
        cp_async4_full(sv + 4 * (t * ws + my_w), sd.vals + 4 * ((int64_t)(t0 + t) * sd.src_st_w + my_w));
    }
    return 0;
  }
  if (sd.mode == 2) {
    for (int t = tid; t < tile_n; t += kThreads) {
      if (t < nt) cp_async4_full(soff + t, sd.off + (int64_t)(t0 + t) * sd.off_st);
      else soff[t] = 0;
    }
  } else {
    v0 = (int64_t)t0 * sd.k;
    v1 = (int64_t)(t0 + nt) * sd.k;
  }
  const char* a = sd.vals + 2 * v0;
  const char* e = sd.vals + 2 * v1;
  const char* a0 = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(a) & ~uintptr_t(15));
  const int nch = (int)((e - a0 + 15) >> 4);
  for (int c = tid; c < nch; c += kThreads) {
    const char* src = a0 + 16 * c;
    const int64_t rem = e - src;
    if (rem >= 16) cp_async16_full(sv + 16 * c, src);
    else cp_async16(sv + 16 * c, src, (int)rem);  // the run's last chunk: read only what belongs to it
  }
  const int shift = (int)(a - a0) >> 1;
  return sd.mode == 2 ? (int)(v0 - shift) : shift;
}

// Block -> (split s, KV head h, batch b). win_last: the first B*H*nsplit blocks (in launch order) are split blocks,
// row-major, and the B*H window blocks come last, so a full wave of split blocks starts together; else
// blockIdx = (s, h, b) with each row's window block between the rows' split blocks. Cheap enough to recompute where
// needed (keeps three registers free across the main loop).
__device__ __forceinline__ void block_coords(const KParams& p, int& s, int& h, int& b) {
  if (p.win_last) {
    const int64_t lin = blockIdx.x + (int64_t)gridDim.x * (blockIdx.y + (int64_t)gridDim.y * blockIdx.z);
    const int64_t ncomp = (int64_t)p.B * p.H * p.nsplit;
    int64_t row;
    if (lin < ncomp) {
      row = lin / p.nsplit;
      s = (int)(lin - row * p.nsplit);
    } else {
      row = lin - ncomp;
      s = p.nsplit;
    }
    h = (int)(row % p.H);
    b = (int)(row / p.H);
  } else {
    s = blockIdx.x;
    h = blockIdx.y;
    b = blockIdx.z;
  }
}

// Merge geometry, shared by merge_row and the split rule of sparse_decode_plan: split subsets per float4 output
// (threads share an output when there are fewer float4 outputs than threads; depends on kThreads, not on the
// merging block's size, so the fused and the separate merge sum in the same order: bitwise equal) and loads in
// flight per thread: 16 (H100, read flush, same build against 8: SmolLM2 B=8 L=32768 70 % 51.1-51.9 -> 48.9-49.3 us,
// B=8 L=4096 18.1 -> 17.7-17.8 us; the split rule keeps its merge-round cost of 8 loads, kMergeRuleLoads: counted
// with 16, the rule took 64 splits for Llama-3-8B B=1 L=4096, 17.5 -> 20.2 us).
#ifndef MUSTAFAR_MERGE_UNROLL
#define MUSTAFAR_MERGE_UNROLL 16
#endif
constexpr int kMergeUnroll = MUSTAFAR_MERGE_UNROLL;
constexpr int kMergeRuleLoads = 8;
__host__ __device__ constexpr int merge_parts(int G, int D) {
  return G * (D / 4) >= kThreads ? 1 : (kThreads / (G * (D / 4)) < 8 ? kThreads / (G * (D / 4)) : 8);
}

// ------------------------------------------------------------------------------------------------
// Merge of one row's partials: out[b, h*G+g, :] = sum_s w_s O_s / sum_s w_s, w_s = 2^(lse_s - max).
// Run by the separate merge kernel, or (default) by the last split block of the row to finish.
// Partials are read with ld.global.cg: they were written by other blocks of the same launch.
// dry_slot >= 0: a dry run by a block that is not the row's last (one-wave grids with a free block slot,
// KParams::warm_merge), through the same code (one call site) with all loads from one word of the block's own slot and
// no stores: it fetches the code into the L2 and the SM's instruction caches before the row's last block needs it
// (the merge runs once per row, so its code is otherwise cold on the critical path: v15 traces, read flush against
// none, 1.2-2.4 us of a 5-6 us merge).
// ------------------------------------------------------------------------------------------------
constexpr int kMergeThreads = 256;

template <int D, bool BF16, int NT>
__device__ __forceinline__ void merge_row(const KParams& p, int h, int b, float* mw,  // mw: [nsp][G] + 2G floats
                                          int dry_slot = -1) {
  const int G = p.G, nsp_row = p.nsplit + 1;
  const bool dry = dry_slot >= 0;
  const int parts = merge_parts(G, D);
  // a dry run's trip counts: every loop body at least once where the real merge runs it
  const int nsp = dry ? min(nsp_row, kMergeUnroll * parts + 1) : nsp_row;
  const int64_t row = (int64_t)(b * p.H + h) * nsp_row;
  const int64_t src = dry ? row + dry_slot : row;  // first slot read, and the slot stride below (0 when dry)
  const int lstride = dry ? 0 : G;
  float* inv = mw + nsp * G;
  float* lsev = inv + G;
  // one warp per query head computes the split weights 2^(lse_s - max)
  for (int g = threadIdx.x >> 5; g < G; g += NT / 32) {
    const int ln = threadIdx.x & 31;
    float M = -INFINITY;
#pragma unroll 4
    for (int s2 = ln; s2 < nsp; s2 += 32) {  // one L2 round trip: the lse values wait in shared memory
      const float x = __ldcg(p.part_lse + src * G + s2 * lstride + g);
      mw[s2 * G + g] = x;
      M = fmaxf(M, x);
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float L = 0.f;
#pragma unroll 1
    for (int s2 = ln; s2 < nsp; s2 += 32) {  // the same lane wrote this entry
      const float w = M == -INFINITY ? 0.f : exp2f(mw[s2 * G + g] - M);
      mw[s2 * G + g] = w;
      L += w;
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
    if (ln == 0) {
      inv[g] = L > 0.f ? 1.f / L : 0.f;
      lsev[g] = L > 0.f ? (M + log2f(L)) * 0.69314718055994531f : -INFINITY;
    }
  }
  __syncthreads();
  // weighted sum: one float4 of channels per thread and split subset (parts threads share an output when there
  // are fewer float4 outputs than threads); kMergeUnroll loads in flight per thread (the sum is L2-latency-bound)
  const int nvec = G * (D / 4);
  float4* red = reinterpret_cast<float4*>(mw + ((nsp * G + 2 * G + 3) & ~3));  // 16-B aligned, (NT-1)... float4s
  const float4* po4 = reinterpret_cast<const float4*>(p.part_o + src * G * D);
  const int sstride = dry ? 0 : G * (D / 4);  // float4s per split
  for (int base = 0; base < nvec * parts; base += NT) {
    const int t = base + threadIdx.x;
    const int v = t % nvec, part = t / nvec;
    const int vl = dry ? 0 : v;  // a dry run's warp loads read one 16-byte word (little L2 traffic)
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    const int g = (4 * v) / D;
    if (part < parts) {
      int s2 = part;
      constexpr int U = kMergeUnroll;  // the summation order does not depend on it
      for (; s2 + (U - 1) * parts < nsp; s2 += U * parts) {
        float4 x[U];
#pragma unroll
        for (int u = 0; u < U; ++u) x[u] = __ldcg(po4 + (int64_t)(s2 + u * parts) * sstride + vl);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const float w = mw[(s2 + u * parts) * G + g];
          acc.x += w * x[u].x;
          acc.y += w * x[u].y;
          acc.z += w * x[u].z;
          acc.w += w * x[u].w;
        }
      }
      for (; s2 < nsp; s2 += parts) {
        const float4 x = __ldcg(po4 + (int64_t)s2 * sstride + vl);
        const float w = mw[s2 * G + g];
        acc.x += w * x.x;
        acc.y += w * x.y;
        acc.z += w * x.z;
        acc.w += w * x.w;
      }
    }
    if (parts > 1) {
      if (part < parts && part > 0) red[(part - 1) * nvec + v] = acc;
      __syncthreads();
      if (part == 0) {
        for (int q = 1; q < parts; ++q) {
          const float4 y = red[(q - 1) * nvec + v];
          acc.x += y.x;
          acc.y += y.y;
          acc.z += y.z;
          acc.w += y.w;
        }
      }
    }
    if (part == 0 && v < nvec && !dry) {
      const float iv = inv[g];
      const int c = 4 * v - g * D;
      char* dst = p.out + 2 * (b * p.o_sb + (int64_t)(h * G + g) * p.o_sh + c);
      store_out<BF16>(dst, acc.x * iv);
      store_out<BF16>(dst + 2, acc.y * iv);
      store_out<BF16>(dst + 4, acc.z * iv);
      store_out<BF16>(dst + 6, acc.w * iv);
      if (p.lse && c == 0) p.lse[(int64_t)b * p.H * G + h * G + g] = lsev[g];
    }
  }
}

template <int D, bool BF16>
__global__ void __launch_bounds__(kMergeThreads) merge_kernel(const __grid_constant__ KParams p) {
  extern __shared__ float mw[];
  merge_row<D, BF16, kMergeThreads>(p, blockIdx.x, blockIdx.y, mw);
}

// ------------------------------------------------------------------------------------------------
// Split kernel
// ------------------------------------------------------------------------------------------------
#ifndef MUSTAFAR_WARM_EVERY
#define MUSTAFAR_WARM_EVERY 4  // dry merge runs (KParams::warm_merge) by the split blocks with s % this == 0
#endif
constexpr int kWarmEvery = MUSTAFAR_WARM_EVERY;
#ifndef MUSTAFAR_MIN_BLOCKS
#define MUSTAFAR_MIN_BLOCKS 4  // blocks per SM the register allocation must allow (G <= 8); experiments: -D...=5
#endif
#ifndef MUSTAFAR_SUB_UNROLL_D128
#define MUSTAFAR_SUB_UNROLL_D128 1  // unroll the two 16-token sub-tiles at head_dim 128 too (A/B switch: =0)
#endif
constexpr bool kSubUnrollD128 = MUSTAFAR_SUB_UNROLL_D128 != 0;  // (pragmas do not expand macros)
#ifndef MUSTAFAR_TRACE
#define MUSTAFAR_TRACE 0  // measurement build (-DMUSTAFAR_TRACE=1): thread 0 of every split-kernel block of one launch
                          // records its phase times (globaltimer; fused merge only) in g_trace, which the host prints
                          // after that launch; scripts/gpu_kernel_trace.py
#endif
#if MUSTAFAR_TRACE
constexpr int kTraceMax = 1 << 16, kTraceCols = 13;
__device__ unsigned long long g_trace[kTraceMax * kTraceCols];
#endif
__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#ifndef MUSTAFAR_MIN_BLOCKS_D64
#define MUSTAFAR_MIN_BLOCKS_D64 6  // head_dim 64: 80 registers, no spills (fp16); 3-5 % faster than 5 blocks per SM
#endif
// FAST: 0 general staging, 1 fast path (cp.async), 2 fast path with sm_90 bulk copies (cp.async on other archs).
// TB: compressed tokens per stage, 64 or (FAST == 2 only) 128. With 128 each warp takes two 16-token sub-tiles per
// stage (tokens 16 warp + 64 sub), so the per-stage costs (barrier, waits, staging) are paid once per 128 tokens.
template <int D, bool BF16, bool GBIG, bool PRED, int FAST, int TB>
__global__ void __launch_bounds__(kThreads, GBIG ? 3 : (D == 64 ? MUSTAFAR_MIN_BLOCKS_D64 : MUSTAFAR_MIN_BLOCKS)) split_kernel(const __grid_constant__ KParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int W = D / 32;
  constexpr int NKB = D / 16;  // k-blocks of S = Q K^T
  constexpr int NMB = D / 16;  // m-blocks (16 channels) of O^T = V^T P^T
  constexpr int NH = GBIG ? 2 : 1;  // n8 blocks of query heads
  constexpr float NEG_INF = -INFINITY;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, q4 = lane & 3;
  unsigned long long tr[7] = {0, 0, 0, 0, 0, 0, 0};  // trace build: t0..t4, then setup done, Q stored
  if (MUSTAFAR_TRACE) tr[0] = gtimer();
  int s, h, b;
  block_coords(p, s, h, b);
  const bool is_win_blk = (s == p.nsplit);  // the window block comes last: it is short and fills the tail
  const int G = p.G;

  // ---- token range of this block -------------------------------------------------------------
  int tbeg, tend;
  if (is_win_blk) {
    tbeg = p.win_start ? max(p.win_start[b], 0) : 0;
    tend = p.n_win;
  } else {
    const int cs = p.comp_start ? max(p.comp_start[b], 0) : 0;
    const int ce = p.comp_end ? min(p.comp_end[b], p.T) : p.T;
    const int len = max(ce - cs, 0);
    int per = (len + p.nsplit - 1) / p.nsplit;
    per = (per + 15) & ~15;
    tbeg = cs + s * per;
    tend = min(ce, tbeg + per);
  }
  const int ntok = max(tend - tbeg, 0);
  // the window block of a FAST kernel runs the fast path (its code is warm from the split blocks, where the general
  // path's code would be fetched cold) when the host found the window rows contiguous and a stage large enough
  const bool win_general = is_win_blk && !(FAST != 0 && p.win_fast);
  const int tile_n_blk = win_general ? p.win_tile : TB;
  const int ntiles = (ntok + tile_n_blk - 1) / tile_n_blk;
  const int ns = p.ns;

  // ---- per-side runtime descriptors (shared memory: keeps them out of the registers) ----------
  __shared__ SideRT sd[2];
  __shared__ uint64_t mbar[4];  // bulk staging: one mbarrier per stage slot (sm_90 fast path)
  if (tid < 2) {
    const int x = tid;
    SideRT r;
    r.capH = p.side[x].capH;
    if (is_win_blk) {
      const WinArgs& w = p.win[x];
      r.vals = w.data + 2 * (b * w.sb + h * w.sh);
      r.bm = nullptr;
      r.off = nullptr;
      r.bm_st = 0;
      r.off_st = 0;
      r.nvals = 0;
      r.mode = win_general ? 1 : 0;  // fast path: the rows as a fixed-k natural image with k = D
      r.k = D;
      r.wpt = D / 2;
      r.src_st_w = w.st / 2;
      r.synth = true;
      r.bm_vec = false;
      r.cpt_magic = 0;
    } else {
      const SideArgs& a = p.side[x];
      r.vals = a.vals + 2 * (b * a.v_sb + h * a.v_sh);
      r.bm = a.bm + b * a.bm_sb + h * a.bm_sh;
      r.off = a.off ? a.off + b * a.off_sb + h * a.off_sh : nullptr;
      r.bm_st = a.bm_st;
      r.off_st = a.off_st;
      r.nvals = a.nvals;
      r.mode = a.mode;
      r.k = a.k;
      r.wpt = a.mode == 1 ? a.k / 2 : 1;
      r.src_st_w = a.k / 2;
      r.synth = false;
      r.bm_vec = a.bm_vec != 0;
      r.cpt_magic = a.cpt_magic;
    }
    const bool skew = !is_win_blk && (p.fflags & (kFSkewK << x));
    r.kst = r.mode == 1 ? 2 * (r.wpt + 1) : (r.mode == 0 ? r.k + (skew ? 8 : 0) : 0);
    r.tpi = kThreads / r.wpt;
    sd[x] = r;
  }
  // Compressed blocks of a FAST kernel take the fast path; the window block, and every block of a FAST == 0 kernel,
  // the general one. The two are separate instances of the main loop (main_loop below), so the fast instance carries
  // no general-path code or runtime path checks (H100, same run: SmolLM2 B=32 L=32768 70 % 160.5 -> 156.5 us,
  // Llama-2-7B B=8 L=32768 668 -> 662 us, Llama-3-8B B=32 L=8192 185.1 -> 184.5 us).
  if (MUSTAFAR_BULK && FAST == 2 && !win_general && tid == 0) {
    for (int i = 0; i < p.ns; ++i) mbar_init(smem_u32(&mbar[i]), 1);
    mbar_init_fence();
  }
  __syncthreads();
  if (MUSTAFAR_TRACE) tr[5] = gtimer();

  // ---- per-warp online-softmax state: heads 8 nh + 2 q4 + c (c = 0, 1) of head block nh --------------------
  float mh[NH][2], lh[NH][2];
  float oacc[NH][NMB][4];  // O^T blocks: rows = 16 channels, columns = 8 heads
#pragma unroll
  for (int nh = 0; nh < NH; ++nh) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      mh[nh][c] = kMaxInit;
      lh[nh][c] = 0.f;
    }
#pragma unroll
    for (int mb = 0; mb < NMB; ++mb)
#pragma unroll
      for (int e = 0; e < 4; ++e) oacc[nh][mb][e] = 0.f;
  }

  constexpr int NQ4 = GBIG ? NKB : NKB / 2;
  __shared__ uint4 sq4[NQ4 * 32];

  // ---- main loop over the block's tiles; fast_c: BoolC<fast path> ----
  auto main_loop = [&](auto fast_c) {
    constexpr bool fast = decltype(fast_c)::value;
    constexpr bool bulk = MUSTAFAR_BULK && FAST == 2 && fast;
    const bool is_win = !fast && is_win_blk;
    const int tile_n = fast ? TB : tile_n_blk;  // (the same value; a constant in the fast instance)
    // ---- variable mode: value-run bounds of the next tiles (prefetched one tile ahead) ----------
    int vcur[2] = {0, 0}, vpref[2] = {0, 0}, vend[2] = {0, 0};
    if (!fast && !is_win && ntiles > 0) {  // (the fast path has no variable mode)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        if (sd[x].mode == 2) {
          vcur[x] = sd[x].off[(int64_t)tbeg * sd[x].off_st];
          vpref[x] = ntiles > 1 ? sd[x].off[(int64_t)(tbeg + tile_n) * sd[x].off_st] : 0;
          const int last = tend - 1;
          int pc = 0;
#pragma unroll
          for (int w = 0; w < W; ++w) pc += __popc(sd[x].bm[(int64_t)last * sd[x].bm_st + w]);
          vend[x] = sd[x].off[(int64_t)last * sd[x].off_st] + pc;
        }
      }
    }

    int* info = reinterpret_cast<int*>(smem + p.info_off);
    unsigned short* table = reinterpret_cast<unsigned short*>(smem + p.table_off);

    // Fast path (FAST kernels, compressed blocks): both sides fixed-k natural images with vector-copyable bitmap rows.
    // Straight-line staging: one bitmap row per thread and the value runs as 16-byte chunks with 32-bit offsets, or
    // (FAST == 2, sm_90) bulk copies.
    auto stage_fast = [&](int j, int slot) {
      constexpr bool kBulk = MUSTAFAR_BULK && FAST == 2;
      unsigned char* sb = smem + slot * p.stage_bytes;
      const int t0 = tbeg + j * TB;
      const int nt = min(TB, ntok - j * TB);
      const int ff = is_win_blk ? 0 : p.fflags;  // window: no skew, bitmaps written below
      // sm_90 bulk form: thread 0 alone posts the stage's byte count on the slot's mbarrier and issues the bulk copies
      // (the bitmaps of both sides as one run each where rows are contiguous and the run starts 16-byte aligned: with
      // 8-byte rows (head_dim 64) an odd last row goes as one cp.async; each unskewed side's value run as one run of
      // whole 16-byte chunks, its partial last chunk as a sized cp.async), so the other warps skip the address math;
      // skewed sides and the other bitmap layouts are staged by all threads as in the plain form
      bool bm_bulk = false;
#if MUSTAFAR_BULK
      if (kBulk) {
        // t0 - tbeg is a multiple of TB (even): with 8-byte rows an even first token keeps every tile's run aligned
        bm_bulk = (ff & kFBmBulk) && (W == 4 || !(tbeg & 1));
        if (tid == 0) {
          const uint32_t bar = smem_u32(&mbar[slot]);
          const char* a0[2];
          int tot[2];
          const uint32_t bm_run = W == 4 ? 16u * nt : 16u * (nt >> 1);  // bytes of each side's bulk-copied rows
          uint32_t bytes = bm_bulk ? 2u * bm_run : 0u;
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const char* a = sd[x].vals + 2 * (int64_t)t0 * sd[x].k;
            const int mis = (int)(reinterpret_cast<uintptr_t>(a) & 15);
            a0[x] = a - mis;
            tot[x] = 2 * nt * sd[x].k + mis;
            if (!(ff & (kFSkewK << x))) bytes += (uint32_t)(tot[x] & ~15);
            info[slot * 2 + x] = mis >> 1;
          }
          mbar_arrive_expect(bar, bytes);
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            if (bm_bulk) {
              int32_t* sbm = reinterpret_cast<int32_t*>(sb + p.bm_off[x]);
              const int32_t* src = sd[x].bm + (int64_t)t0 * W;
              if (bm_run) bulk_g2s(smem_u32(sbm), src, bm_run, bar);
              if (W == 2 && (nt & 1)) cp_async8_full(sbm + (nt - 1) * 2, src + (nt - 1) * 2);
            }
            if (ff & (kFSkewK << x)) continue;
            unsigned char* sv = sb + (x ? p.vals_off[1] : p.vals_off[0]);
            const int full = tot[x] & ~15;
            if (full > 0) bulk_g2s(smem_u32(sv), a0[x], (uint32_t)full, bar);
            if (tot[x] & 15) cp_async16(sv + full, a0[x] + full, tot[x] & 15);
          }
        }
      }
#endif
      if (!bm_bulk || nt < TB) {  // (bulk-copied full tiles: nothing to do here)
#pragma unroll
        for (int rr = 0; rr < TB / kTile; ++rr) {  // bitmaps: one row per thread and round (side r / TB, token
                                                  // r % TB); rows past the tile's end are zero
          const int r = tid + rr * kThreads, x = r / TB, t = r & (TB - 1);
          int32_t* sbm = reinterpret_cast<int32_t*>(sb + (x ? p.bm_off[1] : p.bm_off[0]));
          if (t >= nt) {
#pragma unroll
            for (int w = 0; w < W; ++w) sbm[t * W + w] = 0;
          } else if (is_win_blk) {  // dense window rows: every channel kept
#pragma unroll
            for (int w = 0; w < W; ++w) sbm[t * W + w] = -1;
          } else if (!bm_bulk) {
            const int32_t* src = sd[x].bm + (int64_t)(t0 + t) * sd[x].bm_st;
            if constexpr (W == 4) cp_async16_full(sbm + t * W, src);
            else cp_async8_full(sbm + t * W, src);
          }
        }
      }
      if (kBulk && !(ff & (kFSkewK | kFSkewV))) return;  // every value run staged by thread 0 above
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const bool skew = ff & (kFSkewK << x);
        if (kBulk && !skew) continue;  // staged by thread 0 above
        const int k = sd[x].k;
        const char* a = sd[x].vals + 2 * (int64_t)t0 * k;
        const int mis = (int)(reinterpret_cast<uintptr_t>(a) & 15);
        const char* a0 = a - mis;
        unsigned char* sv = sb + (x ? p.vals_off[1] : p.vals_off[0]);
        const char* src = a0 + 16 * tid;
        if (skew) {  // 16-byte aligned run of whole chunks; token t's chunks land t chunks further on (one bulk copy per
                     // token was measured much slower: Llama-3-8B B=32 L=8192 k=64 251 -> 348 us)
          const int nch = nt * (k >> 3);
          const uint32_t mg = sd[x].cpt_magic;
          for (int c = tid; c < nch; c += kThreads, src += 16 * kThreads)
            cp_async16(sv + 16 * (c + (int)__umulhi((uint32_t)c, mg)), src, 16);
        } else {
          // (the src-size form for every chunk: measured faster than full-form copies plus a sized last chunk)
          const int tot = 2 * nt * k + mis;
          const int nch = (tot + 15) >> 4;
          unsigned char* dst = sv + 16 * tid;
          for (int c = tid; c < nch; c += kThreads, src += 16 * kThreads, dst += 16 * kThreads) {
            const int rem = tot - 16 * c;
            cp_async16(dst, src, rem < 16 ? rem : 16);
          }
        }
        if (tid == 0 && !kBulk) info[slot * 2 + x] = mis >> 1;
      }
    };
    auto stage = [&](int j, int slot) {
      if (fast) {
        stage_fast(j, slot);
        return;
      }
      unsigned char* sb = smem + slot * p.stage_bytes;
      const int t0 = tbeg + j * tile_n;
      const int nt = min(tile_n, ntok - j * tile_n);
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        int64_t v0 = 0, v1 = 0;
        if (sd[x].mode == 2 && !is_win) {
          const int raw1 = (j + 1 < ntiles) ? vpref[x] : vend[x];
          v0 = min(max((int64_t)vcur[x], (int64_t)0), sd[x].nvals);
          v1 = min(max((int64_t)raw1, v0), min(sd[x].nvals, v0 + (int64_t)tile_n * D));
          vcur[x] = raw1;
          vpref[x] = (j + 2 < ntiles) ? sd[x].off[(int64_t)(tbeg + (j + 2) * tile_n) * sd[x].off_st] : 0;
        }
        const int inf = stage_side<D>(sd[x], tid, t0, nt, tile_n, sb + p.vals_off[x],
                                      reinterpret_cast<int32_t*>(sb + p.bm_off[x]),
                                      reinterpret_cast<int32_t*>(sb + p.offs_off[x]), v0, v1);
        if (tid == 0) info[slot * 2 + x] = inf;
      }
    };

    for (int j = 0; j < ns - 1; ++j) {
      if (j < ntiles) stage(j, j);
      cp_async_commit();
    }

    // ---- Q fragments (A operand of S = Q K^T), loaded after the first stages are in flight (the two global round
    //      trips overlap); channel order permuted per lane quad. Kept in shared memory (reloaded per tile) so the
    //      registers stay free for the O accumulators. ----------------------------------------------------------
    // non-GBIG: sq4[(kb / 2) * 32 + lane] = (a0[kb], a2[kb], a0[kb+1], a2[kb+1]); GBIG: sq4[kb * 32 + lane] = (a0, a2, a1, a3)
    if (tid < 32) {
      const unsigned short* qrow0 = reinterpret_cast<const unsigned short*>(p.q + 2 * (b * p.q_sb + (int64_t)(h * G + gq) * p.q_sh));
      const bool r0 = gq < G;
      uint32_t* sq = reinterpret_cast<uint32_t*>(sq4);
#pragma unroll
      for (int kb = 0; kb < NKB; ++kb) {
        const int c = q4 * (D / 4) + 4 * kb;
        const uint32_t a0 = r0 ? (uint32_t(qrow0[c]) | (uint32_t(qrow0[c + 1]) << 16)) : 0u;
        const uint32_t a2 = r0 ? (uint32_t(qrow0[c + 2]) | (uint32_t(qrow0[c + 3]) << 16)) : 0u;
        if constexpr (GBIG) {
          const unsigned short* qrow1 =
              reinterpret_cast<const unsigned short*>(p.q + 2 * (b * p.q_sb + (int64_t)(h * G + gq + 8) * p.q_sh));
          const bool r1 = gq + 8 < G;
          uint32_t* dst = sq + (kb * 32 + lane) * 4;
          dst[0] = a0;
          dst[1] = a2;
          dst[2] = r1 ? (uint32_t(qrow1[c]) | (uint32_t(qrow1[c + 1]) << 16)) : 0u;
          dst[3] = r1 ? (uint32_t(qrow1[c + 2]) | (uint32_t(qrow1[c + 3]) << 16)) : 0u;
        } else {
          uint32_t* dst = sq + ((kb >> 1) * 32 + lane) * 4 + (kb & 1) * 2;
          dst[0] = a0;
          dst[1] = a2;
        }
      }
    }

    if (MUSTAFAR_TRACE) tr[6] = gtimer();  // (thread 0: after its Q fragment stores)
    int rslot = 0;  // stage slot of tile it (it % ns, without the division)
    uint32_t mphase = 0;  // bulk staging: parity of each slot's mbarrier phase to wait for
    for (int it = 0; it < ntiles; ++it, rslot = (rslot + 1 == ns) ? 0 : rslot + 1) {
      if constexpr (TB > kTile) cp_async_wait<0>();  // 2 stages
      else cp_async_wait_stages(ns);
      if (bulk) {
        mbar_wait(smem_u32(&mbar[rslot]), (mphase >> rslot) & 1u);
        mphase ^= 1u << rslot;
      }
      __syncthreads();
      if (MUSTAFAR_TRACE && it == 0) tr[1] = gtimer();
      if (it + ns - 1 < ntiles) stage(it + ns - 1, rslot == 0 ? ns - 1 : rslot - 1);
      cp_async_commit();

      const int nt = min(tile_n, ntok - it * tile_n);
      const unsigned char* sb = smem + rslot * p.stage_bytes;
      const int32_t* sbmK = reinterpret_cast<const int32_t*>(sb + p.bm_off[0]);
      const int32_t* sbmV = reinterpret_cast<const int32_t*>(sb + p.bm_off[1]);
      // this warp's 16-token sub-tiles of the stage: tokens tw..tw+15 (with TB = 64 a single pass, no loop left).
      // Both head dims unroll them: head_dim 64 since v12 (H200: SmolLM2 B=32 L=32768 179 -> 167 us), head_dim 128
      // since the fast path got its own instance (v14, H100: Llama-3-8B B=32 L=8192 185.0 -> 181.1 us; in v12, with
      // the general path in the same loop, 186 -> 188 us)
#pragma unroll(TB == kTile || D == 64 || kSubUnrollD128 ? TB / kTile : 1)
      for (int sub = 0; sub < TB / kTile; ++sub) {
        const int tw = 16 * warp + kTile * sub;
        if (tw >= nt) break;  // warp-uniform

        // ---- table of value positions: lane l -> (side l / 16, token l % 16 of this warp's slice) ----
        {
          const int side = lane >> 4, xl = lane & 15, tl = tw + xl;
          const int32_t* bmw = side ? sbmV : sbmK;
          const int kst = side ? sd[1].kst : sd[0].kst;
          const int capH = side ? sd[1].capH : sd[0].capH;
          const int inf = info[rslot * 2 + side];
          int base;
          if (fast) {
            base = tl * kst + inf;
          } else {
            const int mode = side ? sd[1].mode : sd[0].mode;
            const int32_t* soff = reinterpret_cast<const int32_t*>(sb + (side ? p.offs_off[1] : p.offs_off[0]));
            base = (mode == 2) ? soff[tl] - inf : tl * kst + inf;
          }
          uint32_t e[8];
          if constexpr (D == 128) {
            const uint4 w = *reinterpret_cast<const uint4*>(bmw + tl * 4);
            const int c0 = __popc(w.x), c1 = __popc(w.y), c2 = __popc(w.z), c3 = __popc(w.w);
            // keep every read of this token inside the stage buffer, whatever the offsets say
            base = min(max(base, 0), capH - (c0 + c1 + c2 + c3));
            e[0] = base;
            e[1] = base + __popc(w.x & 0xffffu);
            e[2] = base + c0;
            e[3] = e[2] + __popc(w.y & 0xffffu);
            e[4] = e[2] + c1;
            e[5] = e[4] + __popc(w.z & 0xffffu);
            e[6] = e[4] + c2;
            e[7] = e[6] + __popc(w.w & 0xffffu);
          } else {
            const uint2 w = *reinterpret_cast<const uint2*>(bmw + tl * 2);
            const int c0 = __popc(w.x), c1 = __popc(w.y);
            base = min(max(base, 0), capH - (c0 + c1));
            e[0] = base;
            e[1] = base + __popc(w.x & 0xffu);
            e[2] = base + __popc(w.x & 0xffffu);
            e[3] = base + __popc(w.x & 0xffffffu);
            e[4] = base + c0;
            e[5] = e[4] + __popc(w.y & 0xffu);
            e[6] = e[4] + __popc(w.y & 0xffffu);
            e[7] = e[4] + __popc(w.y & 0xffffffu);
          }
          *reinterpret_cast<uint4*>(table + (warp * 32 + lane) * 8) =
              make_uint4(e[0] + (e[1] << 16), e[2] + (e[3] << 16), e[4] + (e[5] << 16), e[6] + (e[7] << 16));
        }
        __syncwarp();

        // ---- S^T = K Q^T for the warp's 16 tokens (M = 16 tokens, N = 8 heads per head block). Lane gathers tokens gq
        //      (kf[0]) and gq + 8 (kf[1]) of its channel region; a k16 step's A operand is (kf[0][2kb], kf[1][2kb],
        //      kf[0][2kb+1], kf[1][2kb+1]), its B operand the Q pair of head gq. ----
        float sacc[NH][4];
        {
          const uint32_t svK = smem_u32(sb + p.vals_off[0]);
          uint32_t kf[2][D / 8];
#pragma unroll
          for (int jt = 0; jt < 2; ++jt) {
            const int xk = 8 * jt + perm_tok(gq, p.fflags & kFPermTok);  // token of mma row 8 jt + gq
            const uint32_t ents = reinterpret_cast<const uint32_t*>(table)[(warp * 32 + xk) * 4 + q4];
            uint32_t m;
            if constexpr (D == 128) m = static_cast<uint32_t>(sbmK[(tw + xk) * W + q4]);
            else m = reinterpret_cast<const unsigned short*>(sbmK + (tw + xk) * W)[q4];
            // the region's two halves as two independent chains (shorter dependency chains)
            uint32_t lo[D / 16], hi[D / 16];
            Gather<0, D / 8, PRED>::token(m & ((1u << (D / 8)) - 1u), svK + 2 * (ents & 0xffffu), lo);
            Gather<0, D / 8, PRED>::token(m >> (D / 8), svK + 2 * (ents >> 16), hi);
#pragma unroll
            for (int i = 0; i < D / 16; ++i) {
              kf[jt][i] = lo[i];
              kf[jt][D / 16 + i] = hi[i];
            }
          }
          constexpr bool TWO = !GBIG && D == 128;  // one head block, d128: a second accumulator (two mma chains of 4)
          float s2[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s2[e] = 0.f;
#pragma unroll
            for (int nh = 0; nh < NH; ++nh) sacc[nh][e] = 0.f;
          }
#pragma unroll
          for (int kb = 0; kb < NKB; kb += 2) {
            if constexpr (GBIG) {
              const uint4 v = sq4[kb * 32 + lane], v2 = sq4[(kb + 1) * 32 + lane];
              mma16816<BF16>(sacc[0][0], sacc[0][1], sacc[0][2], sacc[0][3], kf[0][2 * kb], kf[1][2 * kb],
                             kf[0][2 * kb + 1], kf[1][2 * kb + 1], v.x, v.y);
              mma16816<BF16>(sacc[1][0], sacc[1][1], sacc[1][2], sacc[1][3], kf[0][2 * kb], kf[1][2 * kb],
                             kf[0][2 * kb + 1], kf[1][2 * kb + 1], v.z, v.w);
              mma16816<BF16>(sacc[0][0], sacc[0][1], sacc[0][2], sacc[0][3], kf[0][2 * kb + 2], kf[1][2 * kb + 2],
                             kf[0][2 * kb + 3], kf[1][2 * kb + 3], v2.x, v2.y);
              mma16816<BF16>(sacc[1][0], sacc[1][1], sacc[1][2], sacc[1][3], kf[0][2 * kb + 2], kf[1][2 * kb + 2],
                             kf[0][2 * kb + 3], kf[1][2 * kb + 3], v2.z, v2.w);
            } else {
              const uint4 v = sq4[(kb >> 1) * 32 + lane];
              mma16816<BF16>(sacc[0][0], sacc[0][1], sacc[0][2], sacc[0][3], kf[0][2 * kb], kf[1][2 * kb],
                             kf[0][2 * kb + 1], kf[1][2 * kb + 1], v.x, v.y);
              float(&acc2)[4] = TWO ? s2 : sacc[0];
              mma16816<BF16>(acc2[0], acc2[1], acc2[2], acc2[3], kf[0][2 * kb + 2], kf[1][2 * kb + 2], kf[0][2 * kb + 3],
                             kf[1][2 * kb + 3], v.z, v.w);
            }
          }
          if constexpr (TWO) {
#pragma unroll
            for (int e = 0; e < 4; ++e) sacc[0][e] += s2[e];
          }
        }

        // ---- online softmax (log2 domain), per head over the tokens ----
        {
          const int vlim = nt - tw;
#pragma unroll
          for (int nh = 0; nh < NH; ++nh)
#pragma unroll
            for (int e = 0; e < 4; ++e) sacc[nh][e] *= p.scale_log2;
          if (vlim < 16) {  // a partial sub-tile (warp-uniform): tokens past the end get -inf
            const int tq = perm_tok(gq, p.fflags & kFPermTok);  // tokens of rows gq and gq + 8: tq, tq + 8
            const bool va = tq < vlim, vb = tq + 8 < vlim;
#pragma unroll
            for (int nh = 0; nh < NH; ++nh) {
              if (!va) sacc[nh][0] = sacc[nh][1] = NEG_INF;
              if (!vb) sacc[nh][2] = sacc[nh][3] = NEG_INF;
            }
          }
#pragma unroll
          for (int nh = 0; nh < NH; ++nh) online_softmax_cols<NMB>(sacc[nh], mh[nh], lh[nh], oacc[nh]);
        }
        // P^T as the B operand of O^T += V^T P^T (k = the warp's 16 tokens, n = heads): the probabilities of tokens
        // gq / gq + 8 packed per head pair, transposed per 8x8 block (movmatrix) into (tokens 2 q4, 2 q4 + 1; head gq)
        uint32_t pb0[NH], pb1[NH], pl0[NH], pl1[NH];
#pragma unroll
        for (int nh = 0; nh < NH; ++nh) {
          const uint32_t x0 = pack2<BF16>(sacc[nh][0], sacc[nh][1]);
          const uint32_t x1 = pack2<BF16>(sacc[nh][2], sacc[nh][3]);
          pb0[nh] = movm_trans(x0);
          pb1[nh] = movm_trans(x1);
          if constexpr (BF16) {
            pl0[nh] = movm_trans(pack2_bf16_lo(sacc[nh][0], sacc[nh][1], x0));
            pl1[nh] = movm_trans(pack2_bf16_lo(sacc[nh][2], sacc[nh][3], x1));
          } else {
            pl0[nh] = pl1[nh] = 0u;
          }
        }

        // ---- O^T += V^T P^T: lane (q4, gq) gathers tokens {2q4, 2q4+1, 2q4+8, 2q4+9} at the channels of its region
        //      gq*D/8 + j; m-block mb takes region channels 2mb (row gq) and 2mb + 1 (row gq + 8) ----
        {
          const uint32_t svV = smem_u32(sb + p.vals_off[1]);
          uint32_t vm[4];
          uint32_t vp[4];
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int xv = perm_tok(2 * q4 + (u & 1), p.fflags & kFPermTok) + 8 * (u >> 1);  // P^T column -> token
            vp[u] = svV + 2 * table[(warp * 32 + 16 + xv) * 8 + gq];
            if constexpr (D == 128) vm[u] = reinterpret_cast<const unsigned short*>(sbmV + (tw + xv) * W)[gq];
            else vm[u] = reinterpret_cast<const unsigned char*>(sbmV + (tw + xv) * W)[gq];
          }
          // two halves of the region keep only 16 gathered registers live
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            constexpr int HN = D / 16;
            uint32_t vb0[HN], vb1[HN];
            Gather<0, HN, PRED>::pair(vm[0] >> (half * HN), vp[0], vm[1] >> (half * HN), vp[1], vb0);
            Gather<0, HN, PRED>::pair(vm[2] >> (half * HN), vp[2], vm[3] >> (half * HN), vp[3], vb1);
            if (half == 0) {
#pragma unroll
              for (int u = 0; u < 4; ++u) vp[u] += 2 * __popc(vm[u] & ((1u << HN) - 1u));
            }
#pragma unroll
            for (int i = 0; i < HN; i += 2) {
              const int mb = (half * HN + i) / 2;
#pragma unroll
              for (int nh = 0; nh < NH; ++nh) {
                mma16816<BF16>(oacc[nh][mb][0], oacc[nh][mb][1], oacc[nh][mb][2], oacc[nh][mb][3], vb0[i], vb0[i + 1],
                               vb1[i], vb1[i + 1], pb0[nh], pb1[nh]);
                if constexpr (BF16)
                  mma16816<BF16>(oacc[nh][mb][0], oacc[nh][mb][1], oacc[nh][mb][2], oacc[nh][mb][3], vb0[i],
                                 vb0[i + 1], vb1[i], vb1[i + 1], pl0[nh], pl1[nh]);
              }
            }
          }
        }
        __syncwarp();  // the table is rebuilt next sub-tile
      }  // sub-tiles
    }
  };  // main_loop
  if constexpr (FAST != 0) {
    if (win_general) main_loop(BoolC<false>{});
    else main_loop(BoolC<true>{});
  } else {
    main_loop(BoolC<false>{});
  }
  cp_async_wait<0>();
  __syncthreads();

  if (MUSTAFAR_TRACE) tr[2] = gtimer();
  // ---- merge the 4 warps, write this block's partial -------------------------------------------
  block_coords(p, s, h, b);
#pragma unroll
  for (int nh = 0; nh < NH; ++nh)
#pragma unroll
    for (int c = 0; c < 2; ++c)
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) lh[nh][c] += __shfl_xor_sync(0xffffffffu, lh[nh][c], o);
  float* fm = reinterpret_cast<float*>(smem);  // [warps][16]
  float* fl = fm + kWarps * 16;                // [warps][16]
  float* fo = fl + kWarps * 16;                // [warps][G][D]
#pragma unroll
  for (int nh = 0; nh < NH; ++nh) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int g = 8 * nh + 2 * q4 + c;
      if (gq == 0) {
        fm[warp * 16 + g] = mh[nh][c];
        fl[warp * 16 + g] = lh[nh][c];
      }
      if (g < G) {
        float* dst = fo + (warp * G + g) * D + gq * (D / 8);
#pragma unroll
        for (int mb = 0; mb < NMB; ++mb)
          *reinterpret_cast<float2*>(dst + 2 * mb) = make_float2(oacc[nh][mb][c], oacc[nh][mb][2 + c]);
      }
    }
  }
  __syncthreads();
  const int nsp = p.nsplit + 1;
  for (int idx = tid; idx < G * D; idx += kThreads) {
    const int g = idx / D, c = idx % D;
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, fm[w * 16 + g]);
    float L = 0.f, acc = 0.f;
    if (M != NEG_INF) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float e = exp2f(fm[w * 16 + g] - M);
        L += e * fl[w * 16 + g];
        acc += e * fo[(w * G + g) * D + c];
      }
    }
    const int64_t pidx = ((int64_t)(b * p.H + h) * nsp + s) * G + g;
    p.part_o[pidx * D + c] = L > 0.f ? acc / L : 0.f;
    if (c == 0) p.part_lse[pidx] = L > 0.f ? M + log2f(L) : NEG_INF;
  }
  if (p.counters == nullptr) return;  // the merge kernel follows
  // ---- last block of the row to finish merges the row (one launch; the counter is reset for the next) ----
  __shared__ int s_last;
  __threadfence();  // this block's partial is visible device-wide before it is counted
  __syncthreads();
  if (tid == 0) {
    const int prev = atomicAdd(p.counters + (b * p.H + h), 1);
    s_last = (prev == nsp - 1);
  }
  __syncthreads();
  if (MUSTAFAR_TRACE) tr[3] = gtimer();
  auto trace_out = [&](int last) {
#if MUSTAFAR_TRACE
    if (tid == 0 && p.trace_on) {
      tr[4] = gtimer();
      unsigned smid;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
      // one record per block in a device buffer, printed by the host after the launch (device printf delayed the
      // exits of the blocks still running)
      const int64_t lin = blockIdx.x + (int64_t)gridDim.x * (blockIdx.y + (int64_t)gridDim.y * blockIdx.z);
      if (lin < kTraceMax) {
        unsigned long long* r = g_trace + lin * kTraceCols;
        r[0] = (unsigned long long)s;
        r[1] = (unsigned long long)h;
        r[2] = (unsigned long long)b;
        r[3] = (unsigned long long)p.nsplit;
        r[4] = smid;
        r[5] = (unsigned long long)last;
#pragma unroll
        for (int i = 0; i < 7; ++i) r[6 + i] = tr[i];
      }
    }
#else
    (void)last;
#endif
  };
  const bool last = s_last;
  if (!last && !(p.warm_merge && s % kWarmEvery == 0)) {
    trace_out(0);
    return;
  }
  if (last) {
    __threadfence();
    if (tid == 0) p.counters[b * p.H + h] = 0;  // all nsp blocks of this row have arrived: safe to reset
  }
  merge_row<D, BF16, kThreads>(p, h, b, reinterpret_cast<float*>(smem), last ? -1 : s);  // one call site: see dry_slot
  trace_out(last ? 1 : 0);
}

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------
using SplitFn = void (*)(KParams);

template <int D, bool BF16, bool GBIG>
SplitFn split_fn(bool pred, int fast, int tile) {
  if (fast == 2) {  // the fast paths exist for the default gather only
    return tile == 128 ? split_kernel<D, BF16, GBIG, true, 2, 128> : split_kernel<D, BF16, GBIG, true, 2, 64>;
  }
  if (fast == 1) return split_kernel<D, BF16, GBIG, true, 1, 64>;
  return pred ? split_kernel<D, BF16, GBIG, true, 0, 64> : split_kernel<D, BF16, GBIG, false, 0, 64>;
}

// fast: the fast staging path applies (use_fast); bulk: its sm_90 bulk-copy form. Bulk copies only with 3 or more
// stages of 64 tokens, or with 128-token stages (tile; 2 stages look as far ahead as 3 of 64): measured (H100, same
// run) Llama-3-8B B=32 L=8192 70 % (3 stages) 215 -> 204 us, but 50 % (k = 64, 2 stages of 64) 254 -> 278 us (the
// copies' longer latency shows with one 64-token tile of lookahead).
SplitFn pick_split(int D, bool bf16, bool gbig, int gather, bool fast, int num_stages, int tile) {
  const bool pred = gather == 0;
  const int f = (fast && pred) ? ((num_stages >= 3 || tile > 64) ? 2 : 1) : 0;
  const int tb = f == 2 ? tile : 64;
  if (D == 128) {
    if (bf16) return gbig ? split_fn<128, true, true>(pred, f, tb) : split_fn<128, true, false>(pred, f, tb);
    return gbig ? split_fn<128, false, true>(pred, f, tb) : split_fn<128, false, false>(pred, f, tb);
  }
  if (bf16) return gbig ? split_fn<64, true, true>(pred, f, tb) : split_fn<64, true, false>(pred, f, tb);
  return gbig ? split_fn<64, false, true>(pred, f, tb) : split_fn<64, false, false>(pred, f, tb);
}

// A/B switches read from the environment (each call site caches its value): -1 unset, 1 if the value starts with
// '1', else 0.
int env_switch(const char* name) {
  const char* v = std::getenv(name);
  return v ? (v[0] == '1' ? 1 : 0) : -1;
}

// Bitmap rows of a side can be staged with one (D/8)-byte cp.async per token.
bool bitmap_vec(const CompressedSide& s, int W) {
  return (reinterpret_cast<uintptr_t>(s.bitmap) % (4 * W) == 0) && s.bm_sb % W == 0 && s.bm_sh % W == 0 &&
         s.bm_st % W == 0;
}

// The fast staging path: both sides fixed-k natural images with vector-copyable bitmaps (the cache's layout).
// MUSTAFAR_NO_FAST=1 turns it off (A/B switch for benchmarks; same results).
bool use_fast(const DecodeParams& p, int k_mode, int v_mode) {
  static const bool off = env_switch("MUSTAFAR_NO_FAST") == 1;
  const int W = p.D / 32;
  return !off && k_mode == 0 && v_mode == 0 && bitmap_vec(p.k, W) && bitmap_vec(p.v, W);
}

SplitFn pick_merge(int D, bool bf16) {
  if (D == 128) return bf16 ? merge_kernel<128, true> : merge_kernel<128, false>;
  return bf16 ? merge_kernel<64, true> : merge_kernel<64, false>;
}

int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Per (device, stream) arrival counters for the fused merge. Zeroed once when (re)allocated; the kernel resets
// each row's counter after use, so consecutive launches (and graph replays) on one stream need no memset.
// Returns nullptr (separate merge kernel) where no buffer can be had: e.g. a larger one is needed while the
// stream is being captured.
int* row_counters(cudaStream_t stream, int64_t rows) {
  struct Buf { int* ptr = nullptr; int64_t cap = 0; };
  static std::mutex mu;
  static std::map<std::pair<int, cudaStream_t>, Buf> bufs;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return nullptr;
  std::lock_guard<std::mutex> lock(mu);
  Buf& bf = bufs[std::make_pair(dev, stream)];
  if (bf.cap >= rows) return bf.ptr;
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
    (void)cudaGetLastError();
    return nullptr;
  }
  int64_t cap = rows < 1024 ? 1024 : rows;
  int* ptr = nullptr;
  if (cudaMalloc(&ptr, cap * sizeof(int)) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  if (cudaMemsetAsync(ptr, 0, cap * sizeof(int), stream) != cudaSuccess) {
    (void)cudaGetLastError();
    cudaFree(ptr);
    return nullptr;
  }
  if (bf.ptr) {  // the old buffer may still be in use by queued work on this stream
    cudaStreamSynchronize(stream);
    cudaFree(bf.ptr);
  }
  bf.ptr = ptr;
  bf.cap = cap;
  return ptr;
}

int side_mode(const CompressedSide& s, int layout) {
  if (s.offsets) return 2;
  if (layout != 2) return 0;  // the exact image measured faster than padded rows (4-byte copies) on H200
  const bool aligned4 = (reinterpret_cast<uintptr_t>(s.values) % 4 == 0) && (s.val_sb % 2 == 0) && (s.val_sh % 2 == 0);
  return (s.k % 4 == 0 && aligned4) ? 1 : 0;
}

// Fast-path sides with k % 16 == 0 (16-byte aligned rows): token runs of k/2 words start k/2 = 0 mod 8 banks apart,
// so the 8 tokens one gather instruction reads pile onto few banks (at k = 64 all on the same ones). A 16-byte gap
// per token spreads them: scripts/bank_conflict_sim.py (random bitmaps, K+V gather wavefronts per 16-token warp
// tile) gives k = 64: 354 -> 286, head_dim 64 k = 32: 167 -> 135; for k % 16 != 0 the gap does not help (head_dim 64
// k = 24: 111 -> 153), so only k % 16 == 0 gets it. Measured (H100, same run, v9): Llama-3-8B B=32 L=8192 k=64
// 276.9 -> 253.2 us, Llama-2-7B B=32 L=8192 1043.7 -> 936.2 us. Head_dim 128 only: SmolLM2 k=32 gained 1.5 % at
// B=32 L=32768 but lost 9 % at B=32 L=8192 (the larger stages cost one of 6 blocks per SM).
// MUSTAFAR_NO_SKEW=1 turns it off (A/B switch; same results).
bool skew_side(const CompressedSide& s, int mode, bool fast, int D) {
  static const bool off = env_switch("MUSTAFAR_NO_SKEW") == 1;
  if (off) return false;
  const bool aligned16 = (reinterpret_cast<uintptr_t>(s.values) % 16 == 0) && (s.val_sb % 8 == 0) && (s.val_sh % 8 == 0);
  return fast && mode == 0 && !s.offsets && s.k % 16 == 0 && aligned16 && D == 128;
}

int side_cap_halves(int mode, int k, int D, bool skew, int tile) {
  int cap = mode == 0 ? tile * (k + (skew ? 8 : 0)) + 16 : (mode == 1 ? tile * (k / 2 + 1) * 2 : tile * D + 16);
  cap = cap > 16 * (D + 2) ? cap : 16 * (D + 2);  // room for a 16-token window tile
  return round_up(cap, 8);
}

// Stage layout: [K values | V values | K bitmap | V bitmap | K offsets | V offsets] (caps in halves, tile tokens);
// returns the stage's bytes and, where asked, the region offsets (the plan sizes the stages, the launch places them).
int stage_layout(const int caps[2], int tile, int W, int* vals_off = nullptr, int* bm_off = nullptr,
                 int* offs_off = nullptr) {
  int o = 0;
  for (int x = 0; x < 2; ++x) {
    if (vals_off) vals_off[x] = o;
    o += round_up(2 * caps[x] + kSlackBytes, 16);
  }
  for (int x = 0; x < 2; ++x) {
    if (bm_off) bm_off[x] = o;
    o += tile * W * 4;
  }
  for (int x = 0; x < 2; ++x) {
    if (offs_off) offs_off[x] = o;
    o += tile * 4;
  }
  return o;
}

int sm_count_of_current_device() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (dev < 0 || dev >= 64) return 0;
  if (cached[dev] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess) cached[dev] = n;
  }
  return cached[dev];
}

cudaError_t fail(const char** err, const char* msg) {
  if (err) *err = msg;
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t sparse_decode_plan(const DecodeParams& p, DecodePlan* plan, const char** err) {
  if (err) *err = nullptr;
  if (p.D != 64 && p.D != 128) return fail(err, "head_dim must be 64 or 128");
  if (p.G < 1 || p.G > 16) return fail(err, "query heads per KV head (G) must be in 1..16");
  if (p.B < 0 || p.H < 0 || p.T < 0 || p.n_win < 0) return fail(err, "negative size");
  if (p.B > 65535 || p.H > 65535) return fail(err, "batch and KV heads must be <= 65535");
  const CompressedSide* sides[2] = {&p.k, &p.v};
  for (int x = 0; x < 2; ++x) {
    const CompressedSide& s = *sides[x];
    if (!s.offsets && (s.k < 1 || s.k > p.D)) return fail(err, "fixed-mode k must be in 1..head_dim");
    if (s.bm_st < p.D / 32 && p.T > 1) return fail(err, "bitmap token stride too small");
  }
  const DenseWindow* wins[2] = {&p.k_win, &p.v_win};
  if (p.n_win > 0) {
    for (int x = 0; x < 2; ++x) {
      const DenseWindow& w = *wins[x];
      if (!w.data) return fail(err, "window data missing");
      if (reinterpret_cast<uintptr_t>(w.data) % 4 || w.sb % 2 || w.sh % 2 || w.st % 2)
        return fail(err, "window tensors need 4-byte aligned rows (even strides)");
    }
  }
  const int D = p.D, W = D / 32;
  plan->k_mode = side_mode(p.k, p.layout);
  plan->v_mode = side_mode(p.v, p.layout);
  const bool fast = use_fast(p, plan->k_mode, plan->v_mode);
  plan->fast = fast ? 1 : 0;
  plan->skew[0] = skew_side(p.k, plan->k_mode, fast, D) ? 1 : 0;
  plan->skew[1] = skew_side(p.v, plan->v_mode, fast, D) ? 1 : 0;
  // Tokens per stage: 128 (two 16-token sub-tiles per warp, bulk-copy kernel, 2 stages) where the fast path runs with
  // automatic or 2 stages and two 128-token stages fit the shared-memory budget of the target occupancy; else 64.
  // Measured (H100, same run, against 64-token stages): Llama-3-8B B=32 L=8192 70 % 199 -> 194 us, Llama-2-7B B=8
  // L=32768 741 -> 712 us, SmolLM2 B=32 L=32768 195 -> 176 us (166 us with the sub-tiles unrolled), and no loss on
  // short splits (SmolLM2 B=1 L=32768, 103 splits of ~320 tokens: 24.3 -> 22.5 us). MUSTAFAR_TILE=64/128 forces it
  // where the fast path runs (A/B switch; same results).
  static const int tile_env = [] {
    const char* v = std::getenv("MUSTAFAR_TILE");
    return v ? std::atoi(v) : 0;
  }();
  const bool big_ok = fast && p.gather == 0 && (p.num_stages <= 0 || p.num_stages == 2) && tile_env != 64;
  // per-block budget of the stages: MUSTAFAR_MIN_BLOCKS (d128) or MUSTAFAR_MIN_BLOCKS_D64 blocks per SM
  constexpr int kStageBudget = (228 * 1024) / MUSTAFAR_MIN_BLOCKS - 5 * 1024;  // 52 KB each for 4
  const int budget = D == 128 ? kStageBudget : (228 * 1024) / MUSTAFAR_MIN_BLOCKS_D64 - 3 * 1024;
  int caps[2];
  auto layout_for = [&](int tile) {  // value capacities and stage bytes for `tile` tokens per stage
    caps[0] = side_cap_halves(plan->k_mode, p.k.k, D, plan->skew[0] != 0, tile);
    caps[1] = side_cap_halves(plan->v_mode, p.v.k, D, plan->skew[1] != 0, tile);
    return stage_layout(caps, tile, W);
  };
  int tile = 64, stage = 0;
  if (big_ok) {
    stage = layout_for(128);
    const int need = 2 * stage + kTableBytes + 64;
    if (need <= (tile_env == 128 ? 227 * 1024 : budget)) tile = 128;
  }
  if (tile == 64) stage = layout_for(64);
  plan->tile = tile;
  plan->cap_halves[0] = caps[0];
  plan->cap_halves[1] = caps[1];
  const int capMin = caps[0] < caps[1] ? caps[0] : caps[1];
  int win_tile = 16 * (capMin / (16 * (D + 2)));
  if (win_tile > kTile) win_tile = kTile;
  if (win_tile < 16) win_tile = 16;
  plan->win_tile = win_tile;
  int ns = tile > 64 ? 2 : p.num_stages;
  // three stages where they still leave room for MUSTAFAR_MIN_BLOCKS blocks per SM
  if (ns <= 0) ns = (3 * stage + kTableBytes + 64 <= kStageBudget) ? 3 : 2;
  if (ns < 2) ns = 2;
  if (ns > 4) ns = 4;
  plan->num_stages = ns;
  const int total = ns * stage + 64 + kTableBytes;
  const int merge_need = 2 * kWarps * 16 * 4 + kWarps * p.G * D * 4;
  plan->smem_bytes = total > merge_need ? total : merge_need;
  if (plan->smem_bytes > 227 * 1024) return fail(err, "shared memory layout too large");

  // split count: fill the SMs with as few waves as possible
  SplitFn fn = pick_split(D, p.dtype == DType::kBFloat16, p.G > 8, p.gather, fast, ns, tile);
  cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       plan->smem_bytes);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), cudaFuncAttributePreferredSharedMemoryCarveout,
                           cudaSharedmemCarveoutMaxShared);
  if (e != cudaSuccess) return e;
  int occ = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, reinterpret_cast<const void*>(fn), kThreads, plan->smem_bytes);
  if (e != cudaSuccess) return e;
  if (occ < 1) occ = 1;
  plan->blocks_per_sm = occ;
  const int sms = sm_count_of_current_device();
  const int64_t slots = (int64_t)(sms > 0 ? sms : 1) * occ;
  const int64_t rows = (int64_t)p.B * p.H;
  const int tiles = (p.T + kTile - 1) / kTile;  // 64-token tiles (the rule's time unit)
  int nsplit = p.num_splits;
  if (nsplit <= 0) {
    // Cost in 64-token tile times: waves of equal blocks x (a block's stages + 1 for its fixed costs), plus the
    // merge of the row's partials by its last block: rounds of kMergeRuleLoads loads per thread, ~0.6 of a
    // 64-token tile at head_dim 64, ~0.45 at head_dim 128. A block's stages are counted in the kernel's stage size
    // (`tile` tokens, as the kernel cuts the rows: ceil(T / n) rounded up to 16) because a part-filled stage costs
    // about as much as a full one (H100, read flush, v16: SmolLM2 B=1 L=32768 70 %, 128-token stages: 103 splits of
    // 2.5 stages 20.0-20.1 us, 128 splits of 2 stages 18.4-18.6 us; the rule counted 64-token tiles before).
    // The merge term was fitted on H200 to the split sweeps in docs/KERNEL_NOTES.md (v7): without it the rule took
    // the most splits that fit one wave, e.g. Llama-3-8B B=1 L=4096: 64 splits 23.4 us, where 32 splits take
    // 17.9 us; v16 lowered it from 0.8 to 0.6 at head_dim 64 with the stage count above.
    nsplit = 1;
    if (tiles > 1 && rows > 0) {
      const int per_round = merge_parts(p.G, D) * kMergeRuleLoads;
      const double merge_round = D == 64 ? 0.6 : 0.45;
      double best = 1e30;
      const int max_ns = tiles < 4096 ? tiles : 4096;
      for (int n = 1; n <= max_ns; ++n) {
        const int64_t waves = (rows * n + slots - 1) / slots;
        const int64_t rounds = (n + 1 + per_round - 1) / per_round;
        const int per = (((p.T + n - 1) / n) + 15) & ~15;                     // tokens per split block
        const double stages = (double)((per + tile - 1) / tile) * (tile / kTile);  // in 64-token tiles
        const double cost = (double)waves * (stages + 1.0) + merge_round * (double)rounds;
        if (cost < best - 1e-9) { best = cost; nsplit = n; }
      }
    }
  }
  if (nsplit < 1) nsplit = 1;
  if (nsplit > 1 << 20) nsplit = 1 << 20;
  plan->num_splits = nsplit;
  // Window blocks after all split blocks where the grid overflows one wave of block slots: measured on H200 (v8),
  // Llama-3-8B B=32 L=8192 70 %: 248.8 -> 226.9 us; where everything fits one wave the interleaved order was
  // 0.5-0.9 us faster. MUSTAFAR_WIN_LAST=0/1 forces the order (A/B switch; same results).
  static const int win_env = env_switch("MUSTAFAR_WIN_LAST");
  plan->win_last = win_env >= 0 ? win_env : (rows * (nsplit + 1) > slots ? 1 : 0);
  // Dry merge runs (see merge_row) where the grid is one wave with a free block slot: there the row merges all come
  // at the end, on cold code. In longer grids the first merges fetch the code while later waves still run, and a dry
  // run would delay the next wave; where the grid fills every slot (SmolLM2 B=8: 24 rows x 33 blocks = 792 slots)
  // the dry runs took issue slots from blocks still computing (H100, same run, three rounds: B=8 L=4096 70 %
  // 16.9-17.7 -> 17.5-18.0 us, L=32768 49.4-50.2 -> 50.1-50.3 us). MUSTAFAR_WARM_MERGE=0/1 forces it (A/B switch;
  // same results).
  static const int warm_env = env_switch("MUSTAFAR_WARM_MERGE");
  plan->warm_merge = warm_env >= 0 ? warm_env : (rows * (nsplit + 1) < slots ? 1 : 0);
  plan->workspace_floats = rows * (int64_t)(nsplit + 1) * p.G * (D + 1);
  return cudaSuccess;
}

cudaError_t sparse_decode_launch(const DecodeParams& p, const DecodePlan& plan, cudaStream_t stream) {
  if (p.B == 0 || p.H == 0) return cudaSuccess;
  if (!p.workspace || !p.out || !p.q) return cudaErrorInvalidValue;
  const int D = p.D, W = D / 32;
  const bool bf16 = p.dtype == DType::kBFloat16;
  KParams kp;
  kp.B = p.B;
  kp.H = p.H;
  kp.G = p.G;
  kp.T = p.T;
  kp.n_win = p.n_win;
  kp.nsplit = plan.num_splits;
  kp.ns = plan.num_stages;
  kp.win_tile = plan.win_tile;
  kp.win_last = plan.win_last;
  kp.warm_merge = plan.warm_merge;
  kp.scale_log2 = p.scale * 1.4426950408889634f;
  kp.q = static_cast<const char*>(p.q);
  kp.q_sb = p.q_sb;
  kp.q_sh = p.q_sh;
  kp.out = static_cast<char*>(p.out);
  kp.o_sb = p.out_sb;
  kp.o_sh = p.out_sh;
  kp.lse = p.lse;
  const int64_t rows = (int64_t)p.B * p.H;
  kp.part_o = p.workspace;
  kp.part_lse = p.workspace + rows * (plan.num_splits + 1) * p.G * D;
  kp.comp_start = p.comp_start;
  kp.comp_end = p.comp_end;
  kp.win_start = p.win_start;
  const CompressedSide* sides[2] = {&p.k, &p.v};
  const int modes[2] = {plan.k_mode, plan.v_mode};
  const int* caps = plan.cap_halves;
  for (int x = 0; x < 2; ++x) {
    const CompressedSide& s = *sides[x];
    SideArgs& a = kp.side[x];
    a.vals = static_cast<const char*>(s.values);
    a.v_sb = s.val_sb;
    a.v_sh = s.val_sh;
    a.nvals = s.n_values;
    a.bm = s.bitmap;
    a.bm_sb = s.bm_sb;
    a.bm_sh = s.bm_sh;
    a.bm_st = s.bm_st;
    a.off = s.offsets;
    a.off_sb = s.off_sb;
    a.off_sh = s.off_sh;
    a.off_st = s.off_st;
    a.mode = modes[x];
    a.k = s.offsets ? D : s.k;
    a.bm_vec = bitmap_vec(s, W);
    a.cpt_magic = plan.skew[x] ? (uint32_t)((0x100000000ull + (uint64_t)(s.k / 8) - 1) / (uint64_t)(s.k / 8)) : 0u;
    a.capH = caps[x];
  }
  const DenseWindow* wins[2] = {&p.k_win, &p.v_win};
  for (int x = 0; x < 2; ++x) {
    kp.win[x].data = static_cast<const char*>(wins[x]->data);
    kp.win[x].sb = wins[x]->sb;
    kp.win[x].sh = wins[x]->sh;
    kp.win[x].st = wins[x]->st;
  }
  const int o = stage_layout(caps, plan.tile, W, kp.vals_off, kp.bm_off, kp.offs_off);
  kp.stage_bytes = o;
  {
    // Window blocks on the fast path: the dense rows [win_start, n_win) of each (b, h) are one contiguous run (token
    // stride D), staged like a fixed-k image with k = D and all-ones bitmaps, where one stage holds them. Measured
    // (H100, read flush): the general path's code, used by no other block, was fetched cold by every window block
    // and made it the last block of its row on small grids. MUSTAFAR_WIN_FAST=0 keeps the general path (A/B
    // switch; same results up to rounding order).
    static const bool env_off = env_switch("MUSTAFAR_WIN_FAST") == 0;
    const int need = (p.n_win < plan.tile ? p.n_win : plan.tile) * D + 8;
    kp.win_fast = plan.fast && !env_off && p.k_win.st == D && p.v_win.st == D && caps[0] >= need && caps[1] >= need;
  }
  {
    auto row16 = [&](const CompressedSide& s) {  // contiguous rows, 16-byte aligned (b, h) bases
      return s.bm_st == W && reinterpret_cast<uintptr_t>(s.bitmap) % 16 == 0 && s.bm_sb % 4 == 0 && s.bm_sh % 4 == 0;
    };
    kp.fflags = (row16(p.k) && row16(p.v) ? kFBmBulk : 0) | (plan.skew[0] ? kFSkewK : 0) | (plan.skew[1] ? kFSkewV : 0);
    // MUSTAFAR_PERM_TOK=0/1: A/B switch (same results up to rounding order)
    static const int perm_env = env_switch("MUSTAFAR_PERM_TOK");
    const bool perm = perm_env >= 0 ? perm_env == 1 : (D == 64 && plan.v_mode == 0 && p.v.k == 32 && !plan.skew[1]);
    if (perm) kp.fflags |= kFPermTok;
  }
#if MUSTAFAR_TRACE
  {  // measurement build: launch number MUSTAFAR_TRACE_CALL of this process prints (scripts/gpu_kernel_trace.py)
    static const char* tc = std::getenv("MUSTAFAR_TRACE_CALL");
    static int calls = 0;
    kp.trace_on = ++calls == (tc ? std::atoi(tc) : 0);
  }
#else
  kp.trace_on = 0;
#endif
  kp.info_off = plan.num_stages * o;
  kp.table_off = kp.info_off + 64;

  SplitFn fn = pick_split(D, bf16, p.G > 8, p.gather, plan.fast != 0, plan.num_stages, plan.tile);
  cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       plan.smem_bytes);
  if (e != cudaSuccess) return e;
  // merge shared memory: weights [nsp][G], 1/sum [G], lse [G], padded to 16 B, then the split-subset partial sums
  const int merge_w = (((plan.num_splits + 1) * p.G + 2 * p.G + 3) & ~3) * 4;
  // weights + the split-subset sums (parts * nvec <= kThreads float4s, fused and separate merge alike)
  const int merge_smem = merge_w + kThreads * 16;
  // fused merge (last block of a row) where its weights fit the split kernel's shared memory
  static const bool env_separate = env_switch("MUSTAFAR_SEPARATE_MERGE") == 1;  // A/B switch for benchmarks
  const bool separate = p.separate_merge || env_separate;
  kp.counters = (merge_smem <= plan.smem_bytes && !separate) ? row_counters(stream, rows) : nullptr;
  dim3 grid(plan.num_splits + 1, p.H, p.B);
  fn<<<grid, kThreads, plan.smem_bytes, stream>>>(kp);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
#if MUSTAFAR_TRACE
  if (kp.trace_on) {  // (g_trace starts zeroed and only this launch writes it: no clearing before the launch)
    const int64_t nb = std::min<int64_t>((int64_t)grid.x * grid.y * grid.z, kTraceMax);
    std::vector<unsigned long long> rec((size_t)nb * kTraceCols);
    cudaStreamSynchronize(stream);
    cudaMemcpyFromSymbol(rec.data(), g_trace, rec.size() * sizeof(unsigned long long));
    for (int64_t i = 0; i < nb; ++i) {
      const unsigned long long* r = rec.data() + i * kTraceCols;
      if (r[6] == 0) continue;
      printf("MTRACE %d %d %d %d %u %d %llu %llu %llu %llu %llu %llu %llu\n", (int)r[0], (int)r[1], (int)r[2], (int)r[3],
             (unsigned)r[4], (int)r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12]);
    }
    fflush(stdout);
  }
#endif
  if (kp.counters) return cudaSuccess;
  SplitFn mfn = pick_merge(D, bf16);
  if (merge_smem > 48 * 1024) {
    e = cudaFuncSetAttribute(reinterpret_cast<const void*>(mfn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             merge_smem);
    if (e != cudaSuccess) return e;
  }
  mfn<<<dim3(p.H, p.B), kMergeThreads, merge_smem, stream>>>(kp);
  return cudaGetLastError();
}

}  // namespace mustafar
