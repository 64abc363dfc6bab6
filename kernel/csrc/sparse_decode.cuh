// Batched sparse decode attention over the token-major bitmap KV format (see kernel/format.py).
//
// Plain CUDA C++ (no torch headers) so CI can compile-check it with nvcc on a machine without a GPU.
// The torch binding (binding.cpp) fills DecodeParams from tensors and calls sparse_decode_plan +
// sparse_decode_launch.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace mustafar {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// One compressed cache side (K or V) of one layer. Strides are in elements of the tensor they index.
struct CompressedSide {
  const int32_t* bitmap = nullptr;  // [B, H, T, D/32]; word dim contiguous
  int64_t bm_sb = 0, bm_sh = 0, bm_st = 0;
  const void* values = nullptr;     // [B, H, n_values] fp16/bf16; last dim contiguous
  int64_t val_sb = 0, val_sh = 0;
  int64_t n_values = 0;             // length of the values view (variable mode clamps reads to it)
  const int32_t* offsets = nullptr; // [B, H, T] (variable mode) or nullptr (fixed mode)
  int64_t off_sb = 0, off_sh = 0, off_st = 0;
  int k = 0;                        // fixed mode: values per token (1..D)
};

// Dense recent window [B, H, Wcap, D] (channel dim contiguous); tokens [win_start[b], n_win) are attended.
struct DenseWindow {
  const void* data = nullptr;
  int64_t sb = 0, sh = 0, st = 0;
};

struct DecodeParams {
  int B = 0, H = 0, G = 0, D = 0;   // batch, KV heads, query heads per KV head, head dim (64 or 128)
  int T = 0;                        // compressed tokens in the views (grid is sized from it)
  int n_win = 0;                    // window tokens (host int, <= Wcap)
  DType dtype = DType::kFloat16;
  const void* q = nullptr;          // [B, H*G, D], last dim contiguous
  int64_t q_sb = 0, q_sh = 0;
  CompressedSide k, v;
  DenseWindow k_win, v_win;
  const int32_t* comp_start = nullptr;  // [B] or nullptr (0)
  const int32_t* comp_end = nullptr;    // [B] or nullptr (T)
  const int32_t* win_start = nullptr;   // [B] or nullptr (0)
  float scale = 1.f;
  void* out = nullptr;              // [B, H*G, D] in dtype, last dim contiguous
  int64_t out_sb = 0, out_sh = 0;
  float* lse = nullptr;             // [B, H*G] contiguous fp32 (natural log), or nullptr
  float* workspace = nullptr;       // sparse_decode_plan().workspace_floats floats
  int num_splits = 0;               // 0: automatic (fill the SMs)
  int num_stages = 0;               // 0: automatic (2..4 pipeline stages)
  int layout = 0;                   // 0/1: stage fixed-mode values as their exact image; 2: padded rows (k % 4 == 0)
  int gather = 0;                   // 0: predicated value gathers (default); 1: branch-free unconditional loads
  int separate_merge = 0;           // 1: always use the separate merge kernel (default: last split block merges)
};

struct DecodePlan {
  int num_splits = 1;               // compressed splits per (b, h); one more block handles the window
  int num_stages = 2;
  int smem_bytes = 0;
  int win_tile = 16;
  int64_t workspace_floats = 0;
  int k_mode = 0, v_mode = 0;       // 0: fixed (natural image), 1: fixed (padded rows), 2: variable
  int blocks_per_sm = 0;            // occupancy of the split kernel
  int win_last = 0;                 // launch order: 1 = all split blocks first, then the window blocks
  int warm_merge = 0;               // 1: blocks that do not merge their row run the merge code dry (one-wave
                                    //    grids with a free block slot)
  int fast = 0;                     // fast staging path (both sides fixed-k images, vector-copyable bitmaps)
  int skew[2] = {0, 0};             // K / V token runs staged 16 bytes apart (fast path, k % 16 == 0, d128)
  int cap_halves[2] = {0, 0};       // K / V value capacity of one stage, in halves
  int tile = 64;                    // compressed tokens per stage: 64, or 128 (bulk-copy fast path, 2 stages)
};

// Checks the parameters, chooses the split count and the shared-memory layout. Host only, no device sync.
// Returns cudaErrorInvalidValue with a message in *err (if given) for unsupported input.
cudaError_t sparse_decode_plan(const DecodeParams& p, DecodePlan* plan, const char** err = nullptr);

// Launches the split kernel (whose last block per row merges the partials; a separate merge kernel only where
// that cannot be used) on `stream` (CUDA-graph capturable).
cudaError_t sparse_decode_launch(const DecodeParams& p, const DecodePlan& plan, cudaStream_t stream);

}  // namespace mustafar
