// Prune + compress (fixed k, per-token top-k by |x|) into the bitmap format: see compress_topk.cuh for the contract.
//
// Work unit: a tile of 32 consecutive tokens of one (batch, head) row, owned by one warp (persistent grid, tiles
// strided over warps). Per tile:
//   1. load: the 32 x D tile goes to shared memory with 16-byte cp.async (row pitch 2D + 16 bytes, so the
//      per-thread 16-byte reads of step 2 are bank-conflict free). The default is one stage (overlap comes from
//      the other resident warps); a two-stage variant copies the next tile while this one is computed.
//   2. threshold, one thread per token: the k-th largest 15-bit key (|x| bit pattern) by MSB-first radix select,
//      all in registers, no cross-lane traffic. Level 1: the top 7 key bits, four keys per uint32 (a byte each, a
//      guard bit above the 7-bit digit: (word - cand * 0x01010101) keeps bit 7 of a byte iff that key >= cand).
//      Level 2: key bits 7..1 of the keys whose top 7 bits equal the level-1 digit (keys above count as 127, keys
//      below as 0), same packing. Bit 0: two 15-bit keys per uint32 with a guard bit each. 15 counting rounds of
//      D/4 (or D/2) word operations, 3 integer instructions per word.
//   3. emit, one warp per token, two tokens at a time (lane l holds channels l + 32 j): keep = key >= threshold, so
//      __ballot_sync(keep_j) is bitmap word j; when more than k keys reach the threshold (ties at it), the keys
//      above it are kept and the keys equal to it are admitted in channel order until k are kept (the rank of a
//      tie: ties in lower words + popc(ties of word j below the lane)). A kept value's place in the token's run is
//      popc(kept bits of lower words) + popc(kept bits of word j below the lane). Values are staged in shared
//      memory in place of the consumed input (a token's run never reaches past its own input row), aligned like
//      their global destination, so the tile's whole value run (32 * k contiguous values) and its bitmap words are
//      written with 16-byte stores.
//
// Measured on an H200 (B=32, H=8, n=8192, D=128, fp16, k=38 or 64): 0.52 ms per side, 1.03-1.04 ms for K and V
// (Triton kernel: 0.90 / 1.78 ms; a plain copy of one side: 0.26 ms); bf16 0.56 / 1.11 ms (more ties at the
// threshold with 8 mantissa bits). ~150 warp instructions per token: ~64 in the threshold search, ~55 in the emit,
// the rest loads, copy-out and bookkeeping (ncu: ALU pipe ~60 % of peak, issue slots ~60 % busy, DRAM ~29 %).
#include "compress_topk.cuh"

#include <atomic>

namespace mustafar {
namespace ctopk {

constexpr int kWarpsPerBlock = 4;
constexpr int kTileRows = 32;  // tokens per tile = lanes per warp
constexpr unsigned kFull = 0xffffffffu;

template <int D>
struct Geo {
  static constexpr int W = D / 32;                 // bitmap words per token
  static constexpr int CHUNKS = D / 8;             // 16-byte chunks per token
  static constexpr int PITCH = 2 * D + 16;         // bytes per staged token
  static constexpr int BUF = kTileRows * PITCH;    // one stage
  static constexpr int NT = D / 4;                 // uint32 words of four 8-bit digits per token
};

template <int D, int STAGES>
struct Smem {
  static constexpr int PER_WARP = STAGES * Geo<D>::BUF + kTileRows * Geo<D>::W * 4 + kTileRows * 4;
  static constexpr int PER_BLOCK = kWarpsPerBlock * PER_WARP;
  static_assert(PER_WARP % 16 == 0, "16-byte alignment of the per-warp areas");
};

// Re-read of 16 bytes of a token from shared memory that the compiler may neither merge with an earlier read nor
// hoist (otherwise it keeps the whole token live in registers between the search levels and spills).
__host__ __device__ __forceinline__ uint4 reread16(const unsigned char* row, int q) {
#ifdef __CUDA_ARCH__
  uint4 v;
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row + 16 * q));
  asm volatile("ld.volatile.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(a));
  return v;
#else
  return reinterpret_cast<const uint4*>(row)[q];
#endif
}

// PTX prmt (generic mode): byte i of the result is byte (s_i & 7) of {b, a} (a = bytes 0..3), or, when s_i & 8,
// that byte's sign bit replicated over 8 bits.
__host__ __device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
#else
  const uint64_t x = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t sel = (s >> (4 * i)) & 0xfu;
    uint32_t byte = static_cast<uint32_t>(x >> (8 * (sel & 7u))) & 0xffu;
    if (sel & 8u) byte = (byte & 0x80u) ? 0xffu : 0u;
    d |= byte << (8 * i);
  }
  return d;
#endif
}

// Number of bytes >= c among the NT words (each byte = 0x80 | 7-bit digit; C = c * 0x01010101, 1 <= c <= 127).
template <int NT>
__host__ __device__ __forceinline__ int count_ge8(const uint32_t (&t)[NT], uint32_t C) {
  static_assert(NT % 4 == 0 && NT <= 63, "byte counters");
  uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;  // four chains: latency
#pragma unroll
  for (int i = 0; i < NT; i += 4) {
    a0 += ((t[i] - C) & 0x80808080u) >> 7;
    a1 += ((t[i + 1] - C) & 0x80808080u) >> 7;
    a2 += ((t[i + 2] - C) & 0x80808080u) >> 7;
    a3 += ((t[i + 3] - C) & 0x80808080u) >> 7;
  }
  const uint32_t a = (a0 + a1) + (a2 + a3);    // byte j: count of byte lane j (<= NT)
  return static_cast<int>((a * 0x01010101u) >> 24);  // sum of the four bytes (<= 4 * NT <= 255)
}

// Number of 15-bit keys >= c in the token (re-read from `row`; C2 = c * 0x00010001, 1 <= c <= 0x7fff).
template <int D>
__host__ __device__ __forceinline__ int count_ge16(const unsigned char* row, uint32_t C2) {
  uint32_t a0 = 0, a1 = 0;
#pragma unroll
  for (int q = 0; q < D / 8; ++q) {
    const uint4 v = reread16(row, q);
    a0 += (((v.x | 0x80008000u) - C2) & 0x80008000u) >> 15;
    a1 += (((v.y | 0x80008000u) - C2) & 0x80008000u) >> 15;
    a0 += (((v.z | 0x80008000u) - C2) & 0x80008000u) >> 15;
    a1 += (((v.w | 0x80008000u) - C2) & 0x80008000u) >> 15;
  }
  const uint32_t a = a0 + a1;  // low half: even channels, high half: odd channels (each <= D/2)
  return static_cast<int>((a & 0xffffu) + (a >> 16));
}

// The k-th largest key (|x| bit pattern & 0x7fff) of one token of D 16-bit values at `row` (16-byte aligned),
// 1 <= k <= D: the largest value thr with #(key >= thr) >= k.
template <int D>
__host__ __device__ __forceinline__ uint32_t kth_largest_key(const unsigned char* row, int k) {
  constexpr int NT = Geo<D>::NT;
  const uint4* r4 = reinterpret_cast<const uint4*>(row);
  uint32_t t[NT];
  // level 1 digits: the high byte of each value (sign | key bits 14..8) with the sign replaced by the guard bit
#pragma unroll
  for (int q = 0; q < D / 8; ++q) {
    const uint4 v = r4[q];
    t[2 * q] = prmt(v.x, v.y, 0x7531u) | 0x80808080u;
    t[2 * q + 1] = prmt(v.z, v.w, 0x7531u) | 0x80808080u;
  }
  uint32_t t1 = 0;
#pragma unroll
  for (int bit = 6; bit >= 0; --bit) {
    const uint32_t c = t1 | (1u << bit);
    if (count_ge8<NT>(t, c * 0x01010101u) >= k) t1 = c;
  }
  // level 2 digits: key bits 7..1 where the top 7 bits equal t1; 127 where they are above, 0 where below
  const uint32_t GE = t1 * 0x01010101u, GT = (t1 + 1) * 0x01010101u;  // t1 + 1 <= 128: no borrow between bytes
#pragma unroll
  for (int q = 0; q < D / 8; ++q) {
    const uint4 v = reread16(row, q);
    const uint32_t lo0 = prmt(v.x, v.y, 0x6420u), lo1 = prmt(v.z, v.w, 0x6420u);  // low bytes, same order
    const uint32_t ge0 = prmt(t[2 * q] - GE, 0, 0xBA98u), ge1 = prmt(t[2 * q + 1] - GE, 0, 0xBA98u);  // 0xff: >=
    const uint32_t gt0 = prmt(t[2 * q] - GT, 0, 0xBA98u), gt1 = prmt(t[2 * q + 1] - GT, 0, 0xBA98u);  // 0xff: >
    t[2 * q] = ((lo0 >> 1) & ge0 & 0x7f7f7f7fu) | gt0 | 0x80808080u;
    t[2 * q + 1] = ((lo1 >> 1) & ge1 & 0x7f7f7f7fu) | gt1 | 0x80808080u;
  }
  uint32_t t2 = 0;
#pragma unroll
  for (int bit = 6; bit >= 0; --bit) {
    const uint32_t c = t2 | (1u << bit);
    if (count_ge8<NT>(t, c * 0x01010101u) >= k) t2 = c;
  }
  // bit 0
  const uint32_t c0 = (t1 << 8) | (t2 << 1) | 1u;
  return count_ge16<D>(row, c0 * 0x00010001u) >= k ? c0 : c0 - 1;
}

#ifdef __CUDACC__

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

struct Tile {
  int64_t bh;  // b * H + h
  int t0;      // first token
  int rows;    // tokens in the tile (1..32)
};

__device__ __forceinline__ Tile decode_tile(int64_t tile, int tiles_per_bh, int n) {
  Tile t;
  t.bh = tile / tiles_per_bh;
  t.t0 = static_cast<int>(tile - t.bh * tiles_per_bh) * kTileRows;
  t.rows = min(kTileRows, n - t.t0);
  return t;
}

template <int D>
__device__ __forceinline__ void issue_tile(const CompressTopkParams& p, const Tile& t, unsigned char* buf, int lane) {
  using G = Geo<D>;
  const int64_t b = t.bh / p.H, h = t.bh - b * p.H;
  const uint16_t* src = static_cast<const uint16_t*>(p.x) + b * p.sx_b + h * p.sx_h + int64_t(t.t0) * p.sx_n;
#pragma unroll
  for (int m = 0; m < G::CHUNKS; ++m) {
    const int c = lane + 32 * m;  // chunk c: token c / CHUNKS, 16-byte piece c % CHUNKS
    const int r = c / G::CHUNKS, q = c % G::CHUNKS;
    if (r < t.rows) cp_async16(buf + r * G::PITCH + q * 16, src + r * p.sx_n + q * 8);
  }
}

// Tie resolution of one token (the whole warp; v[j] = the 16-bit value of channel lane + 32 j): more than k keys
// reach thr, so keep the keys above it, then the keys equal to it in channel order until k are kept.
template <int W>
__device__ __forceinline__ void resolve_ties(const uint32_t (&v)[W], uint32_t thr, int k, uint32_t lt, bool (&keep)[W],
                                          uint32_t (&w)[W]) {
  bool gt[W], eq[W];
  uint32_t e[W];
  int n_gt = 0;
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const uint32_t key = v[j] & 0x7fffu;
    gt[j] = key > thr;
    eq[j] = key == thr;
    n_gt += __popc(__ballot_sync(kFull, gt[j]));
    e[j] = __ballot_sync(kFull, eq[j]);
  }
  const int need = k - n_gt;
  int before = 0;
#pragma unroll
  for (int j = 0; j < W; ++j) {
    keep[j] = gt[j] || (eq[j] && before + __popc(e[j] & lt) < need);
    before += __popc(e[j]);
    w[j] = __ballot_sync(kFull, keep[j]);
  }
}

// Tokens r0 .. r0 + NR - 1 of the tile (those < rows), the whole warp, lane l holding channels l + 32 j: bitmap words
// to bm_s, values to their staged runs. All NR tokens are read before any is written (their runs overwrite them)
// and go through the ballots together (independent chains for latency); ties take one warp-uniform branch.
template <int D, int NR>
__device__ __forceinline__ void emit_tokens(const unsigned char* buf, const uint32_t* thr_s, int r0, int rows, int k,
                                            int lane, uint32_t lt, uint16_t* stage, uint32_t* bm_s) {
  using G = Geo<D>;
  constexpr int W = G::W;
  uint32_t v[NR][W], thr[NR], w[NR][W];
  bool keep[NR][W];
  int total[NR];
#pragma unroll
  for (int i = 0; i < NR; ++i) {  // r0 + i <= 31: r0 is a multiple of NR below rows <= 32
    const uint16_t* rp = reinterpret_cast<const uint16_t*>(buf + (r0 + i) * G::PITCH);
#pragma unroll
    for (int j = 0; j < W; ++j) v[i][j] = rp[lane + 32 * j];
    thr[i] = thr_s[r0 + i];
  }
  __syncwarp();
  bool ties = false;
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    total[i] = 0;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      keep[i][j] = (v[i][j] & 0x7fffu) >= thr[i];
      w[i][j] = __ballot_sync(kFull, keep[i][j]);
      total[i] += __popc(w[i][j]);
    }
    ties |= total[i] != k && r0 + i < rows;
  }
  if (ties) {
#pragma unroll
    for (int i = 0; i < NR; ++i)
      if (total[i] != k && r0 + i < rows) resolve_ties<W>(v[i], thr[i], k, lt, keep[i], w[i]);
  }
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    if (r0 + i >= rows) break;
    uint16_t* out = stage + (r0 + i) * k;
    int pos = 0;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      if (keep[i][j]) out[pos + __popc(w[i][j] & lt)] = static_cast<uint16_t>(v[i][j]);
      pos += __popc(w[i][j]);
    }
    if (lane == 0) {
      uint32_t* bm = bm_s + (r0 + i) * W;
      if constexpr (W == 4) {
        *reinterpret_cast<uint4*>(bm) = make_uint4(w[i][0], w[i][1], w[i][2], w[i][3]);
      } else {
        *reinterpret_cast<uint2*>(bm) = make_uint2(w[i][0], w[i][1]);
      }
    }
  }
}

template <int D, int NR>
__device__ __forceinline__ void process_tile(const CompressTopkParams& p, const Tile& t, unsigned char* buf,
                                             uint32_t* bm_s, uint32_t* thr_s, int lane) {
  using G = Geo<D>;
  constexpr int W = G::W;
  const int k = p.k;
  // 1. thresholds, one thread per token (lanes >= rows compute on stale data, unused)
  thr_s[lane] = k < D ? kth_largest_key<D>(buf + lane * G::PITCH, k) : 0u;
  __syncwarp();

  // 2. bitmap words and values, one warp per token; values staged in place, aligned like their destination
  uint16_t* gvals = static_cast<uint16_t*>(p.values) + (t.bh * p.n + t.t0) * int64_t(k);
  const int delta = static_cast<int>((reinterpret_cast<uintptr_t>(gvals) >> 1) & 7u);  // 16-bit elements
  uint16_t* stage = reinterpret_cast<uint16_t*>(buf) + delta;
  const uint32_t lt = (1u << lane) - 1u;
  for (int r = 0; r < t.rows; r += NR) emit_tokens<D, NR>(buf, thr_s, r, t.rows, k, lane, lt, stage, bm_s);
  __syncwarp();

  // 3. copy out: the value run (16-byte stores, partial pieces at both ends element by element), the bitmap
  const int lo_valid = 2 * delta, end = 2 * delta + 2 * t.rows * k;
  unsigned char* gbase = reinterpret_cast<unsigned char*>(gvals) - lo_valid;  // 16-byte aligned
  for (int lo = lane * 16; lo < end; lo += 32 * 16) {
    if (lo >= lo_valid && lo + 16 <= end) {
      *reinterpret_cast<uint4*>(gbase + lo) = *reinterpret_cast<const uint4*>(buf + lo);
    } else {
#pragma unroll
      for (int e = 0; e < 16; e += 2) {
        const int bb = lo + e;
        if (bb >= lo_valid && bb < end)
          *reinterpret_cast<uint16_t*>(gbase + bb) = *reinterpret_cast<const uint16_t*>(buf + bb);
      }
    }
  }
  if (lane < t.rows) {
    int32_t* dst = p.bitmap + (t.bh * p.n + t.t0 + lane) * W;
    if constexpr (W == 4) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(bm_s + lane * 4);
    } else {
      *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(bm_s + lane * 2);
    }
  }
}

template <int D, int STAGES, int MINB, int NR>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, MINB)
    prune_compress_topk_kernel(const CompressTopkParams p, int64_t total_tiles, int tiles_per_bh) {
  using G = Geo<D>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  unsigned char* wbase = smem + warp * Smem<D, STAGES>::PER_WARP;
  uint32_t* bm_s = reinterpret_cast<uint32_t*>(wbase + STAGES * G::BUF);
  uint32_t* thr_s = bm_s + kTileRows * G::W;
  const int64_t step = int64_t(gridDim.x) * kWarpsPerBlock;
  int64_t tile = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (STAGES == 2) {
    if (tile < total_tiles) issue_tile<D>(p, decode_tile(tile, tiles_per_bh, p.n), wbase, lane);
    cp_async_commit();
  }
  for (int it = 0; tile < total_tiles; ++it, tile += step) {
    unsigned char* cur = wbase + (STAGES == 2 ? (it & 1) * G::BUF : 0);
    const Tile t = decode_tile(tile, tiles_per_bh, p.n);
    if (STAGES == 2) {
      const int64_t next = tile + step;
      if (next < total_tiles)
        issue_tile<D>(p, decode_tile(next, tiles_per_bh, p.n), wbase + ((it + 1) & 1) * G::BUF, lane);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      issue_tile<D>(p, t, cur, lane);
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncwarp();
    process_tile<D, NR>(p, t, cur, bm_s, thr_s, lane);
    __syncwarp();  // the buffer is refilled by a later issue
  }
  if (STAGES == 2) cp_async_wait<0>();
}

// ------------------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------------------
constexpr int kMaxDevices = 64;

int sm_count(int dev) {
  static std::atomic<int> cached[kMaxDevices];
  if (dev < 0 || dev >= kMaxDevices) return 132;
  int n = cached[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      n = 132;
    }
    cached[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Sets the dynamic shared memory limit (once per device) and returns the resident blocks per SM (0 on error).
template <int D, int STAGES, int MINB, int NR>
int prepare(int dev, cudaError_t* err) {
  static std::atomic<int> cached[kMaxDevices];
  const int slot = (dev >= 0 && dev < kMaxDevices) ? dev : 0;
  int blocks = cached[slot].load(std::memory_order_relaxed);
  if (blocks > 0) return blocks;
  auto fn = prune_compress_topk_kernel<D, STAGES, MINB, NR>;
  constexpr int smem = Smem<D, STAGES>::PER_BLOCK;
  cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(fn),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, kWarpsPerBlock * 32, smem);
  if (e != cudaSuccess || blocks <= 0) {
    *err = e != cudaSuccess ? e : cudaErrorInvalidConfiguration;
    return 0;
  }
  cached[slot].store(blocks, std::memory_order_relaxed);
  return blocks;
}

template <int D, int STAGES, int MINB, int NR>
cudaError_t launch(const CompressTopkParams& p, cudaStream_t stream, int64_t total_tiles, int tiles_per_bh) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  const int blocks_per_sm = prepare<D, STAGES, MINB, NR>(dev, &e);
  if (blocks_per_sm == 0) return e;
  const int64_t want = (total_tiles + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t resident = int64_t(blocks_per_sm) * sm_count(dev);
  const int grid = static_cast<int>(want < resident ? want : resident);
  prune_compress_topk_kernel<D, STAGES, MINB, NR>
      <<<grid, kWarpsPerBlock * 32, Smem<D, STAGES>::PER_BLOCK, stream>>>(p, total_tiles, tiles_per_bh);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace ctopk

#ifdef __CUDACC__

// Kernel configurations: (shared-memory stages, min resident blocks of 4 warps for __launch_bounds__, tokens per emit
// group). Variant 0 is the default; the others stay for benchmarks (tests check every variant). H200, B=32 H=8
// n=8192 D=128 fp16, k=38, ms per side: 0.523 / 0.527 / 0.571 / 0.597 (bf16: 0.561 / 0.564 / 0.629 / 0.692).
// More resident warps did not help (variant 1 vs 0: 24 vs 16-24 warps); four-token emit groups cost more
// instructions than their extra latency hiding gains; the double-buffered variant is held to 12 warps by its
// shared memory.
#define MUSTAFAR_CTOPK_VARIANTS(X) \
  X(1, 4, 2)                       \
  X(1, 6, 2)                       \
  X(1, 4, 4)                       \
  X(2, 3, 4)

namespace ctopk {
constexpr int kNumVariants = 0
#define MUSTAFAR_CTOPK_COUNT(S, M, R) +1
    MUSTAFAR_CTOPK_VARIANTS(MUSTAFAR_CTOPK_COUNT);
#undef MUSTAFAR_CTOPK_COUNT

template <int D>
cudaError_t launch_variant(int variant, const CompressTopkParams& p, cudaStream_t stream, int64_t total_tiles,
                           int tiles_per_bh) {
  int i = 0;
#define MUSTAFAR_CTOPK_CASE(S, M, R) \
  if (variant == i++) return launch<D, S, M, R>(p, stream, total_tiles, tiles_per_bh);
  MUSTAFAR_CTOPK_VARIANTS(MUSTAFAR_CTOPK_CASE)
#undef MUSTAFAR_CTOPK_CASE
  return cudaErrorInvalidValue;
}
}  // namespace ctopk

int prune_compress_topk_num_variants() { return ctopk::kNumVariants; }

cudaError_t prune_compress_topk_launch(const CompressTopkParams& p, cudaStream_t stream, const char** err) {
  auto fail = [&](const char* msg) {
    if (err) *err = msg;
    return cudaErrorInvalidValue;
  };
  if (p.D != 64 && p.D != 128) return fail("head_dim must be 64 or 128");
  if (p.k < 1 || p.k > p.D) return fail("k must be in 1..head_dim");
  if (p.B < 0 || p.H < 0 || p.n < 0) return fail("negative size");
  if (p.variant < 0 || p.variant >= prune_compress_topk_num_variants()) return fail("unknown kernel variant");
  if (p.B == 0 || p.H == 0 || p.n == 0) return cudaSuccess;
  if (!p.x || !p.bitmap || !p.values) return fail("null pointer");
  if (reinterpret_cast<uintptr_t>(p.x) % 16 || p.sx_b % 8 || p.sx_h % 8 || p.sx_n % 8)
    return fail("x must be 16-byte aligned with strides that are multiples of 8 elements");
  if (reinterpret_cast<uintptr_t>(p.bitmap) % (p.D / 8) || reinterpret_cast<uintptr_t>(p.values) % 2)
    return fail("bitmap must be aligned to a token's words, values to 2 bytes");
  const int tiles_per_bh = (p.n + ctopk::kTileRows - 1) / ctopk::kTileRows;
  const int64_t total_tiles = int64_t(p.B) * p.H * tiles_per_bh;
  return p.D == 128 ? ctopk::launch_variant<128>(p.variant, p, stream, total_tiles, tiles_per_bh)
                    : ctopk::launch_variant<64>(p.variant, p, stream, total_tiles, tiles_per_bh);
}

#endif  // __CUDACC__

}  // namespace mustafar
