// Thin torch binding of the prune + compress kernel (compress_topk.cu): checks dtype, shape and device, allocates
// the outputs, launches on the current stream. No host synchronisation.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>
#include <cstdint>
#include <vector>

#include "compress_topk.cuh"

namespace {

using torch::Tensor;

// Element stride of dim d, 0 where the dim has size 1 (its stride is never used).
int64_t used_stride(const Tensor& x, int d) { return x.size(d) > 1 ? x.stride(d) : 0; }

bool kernel_layout(const Tensor& x) {
  // 16-byte rows at 16-byte aligned addresses: a contiguous last dim, strides in multiples of 8 elements
  return (x.size(3) <= 1 || x.stride(3) == 1) && used_stride(x, 0) % 8 == 0 && used_stride(x, 1) % 8 == 0 &&
         used_stride(x, 2) % 8 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
}

// x [B, H, n, D] fp16/bf16 on a CUDA device, D = 64 or 128, 0 <= k <= D. Returns {bitmap int32 [B, H, n, D/32],
// values [B, H, n*k]} (the fixed-mode Chunk of kernel.format.compress_reference(x, topk_keep_mask(|x|, k), k)).
// A view whose strides the kernel cannot read (not 16-byte rows) is copied with .contiguous() first.
std::vector<Tensor> prune_compress_topk(const Tensor& x_in, int64_t k, int64_t variant) {
  TORCH_CHECK_VALUE(x_in.is_cuda(), "prune_compress_topk: x must be a CUDA tensor, got ", x_in.device());
  TORCH_CHECK_VALUE(x_in.dim() == 4, "prune_compress_topk: expected x of shape [B, H, n, D], got ", x_in.sizes());
  TORCH_CHECK_TYPE(x_in.scalar_type() == torch::kFloat16 || x_in.scalar_type() == torch::kBFloat16,
                   "prune_compress_topk: unsupported dtype ", x_in.scalar_type(), " (float16 or bfloat16)");
  const int64_t B = x_in.size(0), H = x_in.size(1), n = x_in.size(2), D = x_in.size(3);
  TORCH_CHECK_VALUE(D == 64 || D == 128, "prune_compress_topk: head_dim must be 64 or 128, got ", D);
  TORCH_CHECK_VALUE(k >= 0 && k <= D, "k must be in [0, ", D, "], got ", k);
  TORCH_CHECK(variant >= 0 && variant < mustafar::prune_compress_topk_num_variants(),
              "prune_compress_topk: unknown variant ", variant);
  TORCH_CHECK_VALUE(B <= INT_MAX && H <= INT_MAX && n <= INT_MAX, "prune_compress_topk: sizes too large");
  const c10::cuda::CUDAGuard guard(x_in.device());

  const auto bm_opts = x_in.options().dtype(torch::kInt32);
  Tensor bitmap = k == 0 ? torch::zeros({B, H, n, D / 32}, bm_opts) : torch::empty({B, H, n, D / 32}, bm_opts);
  Tensor values = torch::empty({B, H, n * k}, x_in.options());
  if (k == 0 || B * H * n == 0) return {bitmap, values};

  Tensor x = x_in;
  if (!kernel_layout(x)) {
    x = x.contiguous();
    if (!kernel_layout(x)) x = x.clone(at::MemoryFormat::Contiguous);  // contiguous but misaligned view
  }
  mustafar::CompressTopkParams p;
  p.x = x.data_ptr();
  p.sx_b = used_stride(x, 0);
  p.sx_h = used_stride(x, 1);
  p.sx_n = used_stride(x, 2);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.n = static_cast<int>(n);
  p.D = static_cast<int>(D);
  p.k = static_cast<int>(k);
  p.bitmap = bitmap.data_ptr<int32_t>();
  p.values = values.data_ptr();
  p.variant = static_cast<int>(variant);
  const char* err = nullptr;
  const cudaError_t e = mustafar::prune_compress_topk_launch(p, at::cuda::getCurrentCUDAStream(), &err);
  TORCH_CHECK(e == cudaSuccess, "prune_compress_topk: ", err ? err : cudaGetErrorString(e));
  return {bitmap, values};
}

}  // namespace

void register_compress(pybind11::module& m) {
  m.def("prune_compress_topk", &prune_compress_topk,
        "Per-token top-k (by |x|) prune + compress into the bitmap format, fp16/bf16, D = 64/128. "
        "Returns [bitmap int32 [B, H, n, D/32], values [B, H, n*k]].",
        pybind11::arg("x"), pybind11::arg("k"), pybind11::arg("variant") = 0);
  m.def("prune_compress_topk_num_variants", &mustafar::prune_compress_topk_num_variants,
        "Number of kernel variants of prune_compress_topk (0 is the default)");
}
