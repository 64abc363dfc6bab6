// Prune + compress of K or V into the fixed-k token-major bitmap format (kernel/format.py), CUDA.
//
// Per token (a row of D channels) keep the k channels of largest |x|; ties go to the lower channel index, exactly as
// kernel.format.topk_keep_mask. Output: bitmap int32 [B, H, n, D/32] (bit c%32 of word c//32 set iff channel c is
// kept) and values [B, H, n*k] (token t's kept values at [t*k, t*k + k), ascending channel order). Only the 16-bit
// patterns of x are used (|x| orders like `bits & 0x7fff` for fp16 and bf16 alike), so one kernel serves both.
//
// Plain CUDA C++ (no torch headers): raw pointers and strides, launched on a caller's stream, no host sync.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace mustafar {

struct CompressTopkParams {
  const void* x = nullptr;  // [B, H, n, D] 16-bit floats (fp16 or bf16), last dim contiguous, 16-byte aligned
  int64_t sx_b = 0, sx_h = 0, sx_n = 0;  // element strides of x; each a multiple of 8 (16 bytes)
  int B = 0, H = 0, n = 0, D = 0, k = 0;  // D = 64 or 128; 1 <= k <= D
  int32_t* bitmap = nullptr;  // [B, H, n, D/32], contiguous
  void* values = nullptr;     // [B, H, n*k], contiguous, same 16-bit type as x
  int variant = 0;            // 0: default; 1..: tuning variants (see prune_compress_topk_num_variants)
};

// Number of kernel variants `variant` may select (0 is the default).
int prune_compress_topk_num_variants();

// Launches on `stream`. Returns cudaErrorInvalidValue with *err set (a static string) for bad parameters, or the
// launch error. B, H or n == 0 is a no-op.
cudaError_t prune_compress_topk_launch(const CompressTopkParams& p, cudaStream_t stream, const char** err);

}  // namespace mustafar
