// Thin torch binding of the sparse decode attention kernel (sparse_decode.cu): checks dtypes, shapes and
// devices, allocates the output and the workspace, launches on the current stream. No host synchronisation.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "sparse_decode.cuh"

namespace {

using torch::Tensor;

void check_same_device(const Tensor& t, const Tensor& q, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == q.device(), name, " is on ", t.device(), " but q is on ", q.device());
}

// [B] int32 contiguous on q's device (converts int64 / non-contiguous input; no host sync).
c10::optional<Tensor> row_vector(const c10::optional<Tensor>& t, int64_t B, const Tensor& q, const char* name) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  check_same_device(*t, q, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == B, name, " must have shape [B] = [", B, "], got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == torch::kInt32 || t->scalar_type() == torch::kInt64, name,
              " must be int32 or int64, got ", t->scalar_type());
  return t->to(torch::kInt32).contiguous();
}

void fill_side(mustafar::CompressedSide& s, const Tensor& bitmap, const Tensor& values,
               const c10::optional<Tensor>& offsets, int64_t k, const Tensor& q, int64_t B, int64_t H, int64_t T,
               int64_t D, const char* side) {
  check_same_device(bitmap, q, side);
  check_same_device(values, q, side);
  TORCH_CHECK(bitmap.scalar_type() == torch::kInt32, side, " bitmap must be int32, got ", bitmap.scalar_type());
  TORCH_CHECK(bitmap.dim() == 4 && bitmap.size(0) == B && bitmap.size(1) == H && bitmap.size(2) == T &&
                  bitmap.size(3) == D / 32,
              side, " bitmap must have shape [B, H, T, D/32] = [", B, ", ", H, ", ", T, ", ", D / 32, "], got ",
              bitmap.sizes());
  TORCH_CHECK(bitmap.stride(3) == 1 || bitmap.size(3) == 1, side, " bitmap word dim must be contiguous");
  TORCH_CHECK(values.scalar_type() == q.scalar_type(), side, " values dtype ", values.scalar_type(),
              " differs from q dtype ", q.scalar_type());
  TORCH_CHECK(values.dim() == 3 && values.size(0) == B && values.size(1) == H, side,
              " values must have shape [B, H, n_values], got ", values.sizes());
  TORCH_CHECK(values.stride(2) == 1 || values.size(2) <= 1, side, " values last dim must be contiguous");
  s.bitmap = bitmap.data_ptr<int32_t>();
  s.bm_sb = bitmap.stride(0);
  s.bm_sh = bitmap.stride(1);
  s.bm_st = T > 1 ? bitmap.stride(2) : D / 32;
  s.values = values.data_ptr();
  s.val_sb = values.stride(0);
  s.val_sh = values.stride(1);
  s.n_values = values.size(2);
  if (offsets.has_value() && offsets->defined()) {
    const Tensor& o = *offsets;
    check_same_device(o, q, side);
    TORCH_CHECK(o.scalar_type() == torch::kInt32, side, " offsets must be int32, got ", o.scalar_type());
    TORCH_CHECK(o.dim() == 3 && o.size(0) == B && o.size(1) == H && o.size(2) == T, side,
                " offsets must have shape [B, H, T], got ", o.sizes());
    s.offsets = o.data_ptr<int32_t>();
    s.off_sb = o.stride(0);
    s.off_sh = o.stride(1);
    s.off_st = o.stride(2);
    s.k = 0;
  } else {
    TORCH_CHECK(k >= 1 && k <= D, side, " fixed-mode k must be in 1..", D, ", got ", k);
    TORCH_CHECK(values.size(2) >= T * k, side, " values hold ", values.size(2), " entries, fixed mode needs T*k = ",
                T * k);
    s.offsets = nullptr;
    s.k = static_cast<int>(k);
  }
}

Tensor window_tensor(const Tensor& w, const Tensor& q, int64_t B, int64_t H, int64_t D, const char* name) {
  check_same_device(w, q, name);
  TORCH_CHECK(w.scalar_type() == q.scalar_type(), name, " dtype ", w.scalar_type(), " differs from q dtype ",
              q.scalar_type());
  TORCH_CHECK(w.dim() == 4 && w.size(0) == B && w.size(1) == H && w.size(3) == D, name,
              " must have shape [B, H, Wcap, D], got ", w.sizes());
  const bool ok = w.stride(3) == 1 && w.stride(0) % 2 == 0 && w.stride(1) % 2 == 0 && w.stride(2) % 2 == 0 &&
                  reinterpret_cast<uintptr_t>(w.data_ptr()) % 4 == 0;
  return ok ? w : w.contiguous();
}

std::vector<Tensor> sparse_decode_attention(const Tensor& q, const Tensor& k_bitmap, const Tensor& k_values,
                                            const c10::optional<Tensor>& k_offsets, int64_t k_k,
                                            const Tensor& v_bitmap, const Tensor& v_values,
                                            const c10::optional<Tensor>& v_offsets, int64_t v_k,
                                            const Tensor& k_win_in, const Tensor& v_win_in, int64_t n_win,
                                            double scale, const c10::optional<Tensor>& comp_start_in,
                                            const c10::optional<Tensor>& comp_end_in,
                                            const c10::optional<Tensor>& win_start_in, bool return_lse,
                                            int64_t num_splits, int64_t num_stages, int64_t layout,
                                            int64_t gather, const c10::optional<Tensor>& out_opt,
                                            const c10::optional<Tensor>& lse_opt) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor");
  TORCH_CHECK(q.scalar_type() == torch::kFloat16 || q.scalar_type() == torch::kBFloat16,
              "q must be float16 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 3, "q must have shape [B, Hq, D], got ", q.sizes());
  TORCH_CHECK(q.stride(2) == 1, "q last dim must be contiguous");
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  TORCH_CHECK(D == 64 || D == 128, "head_dim must be 64 or 128, got ", D);
  TORCH_CHECK(k_bitmap.dim() == 4, "k bitmap must have shape [B, H, T, D/32], got ", k_bitmap.sizes());
  const int64_t H = k_bitmap.size(1), T = k_bitmap.size(2);
  TORCH_CHECK(H > 0 && Hq % H == 0, "query heads (", Hq, ") must be a multiple of KV heads (", H, ")");
  TORCH_CHECK(Hq / H <= 16, "at most 16 query heads per KV head are supported, got ", Hq / H);
  TORCH_CHECK(T < (int64_t(1) << 31) / 128, "too many tokens");

  mustafar::DecodeParams p;
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.G = static_cast<int>(Hq / H);
  p.D = static_cast<int>(D);
  p.T = static_cast<int>(T);
  p.dtype = q.scalar_type() == torch::kBFloat16 ? mustafar::DType::kBFloat16 : mustafar::DType::kFloat16;
  p.q = q.data_ptr();
  p.q_sb = q.stride(0);
  p.q_sh = q.stride(1);
  fill_side(p.k, k_bitmap, k_values, k_offsets, k_k, q, B, H, T, D, "k");
  fill_side(p.v, v_bitmap, v_values, v_offsets, v_k, q, B, H, T, D, "v");

  const Tensor k_win = window_tensor(k_win_in, q, B, H, D, "k_win");
  const Tensor v_win = window_tensor(v_win_in, q, B, H, D, "v_win");
  TORCH_CHECK(k_win.size(2) == v_win.size(2), "k_win and v_win hold different token counts");
  TORCH_CHECK(n_win >= 0 && n_win <= k_win.size(2), "n_win (", n_win, ") must be in 0..Wcap (", k_win.size(2), ")");
  p.n_win = static_cast<int>(n_win);
  p.k_win = {k_win.data_ptr(), k_win.stride(0), k_win.stride(1), k_win.stride(2)};
  p.v_win = {v_win.data_ptr(), v_win.stride(0), v_win.stride(1), v_win.stride(2)};

  const auto comp_start = row_vector(comp_start_in, B, q, "comp_start");
  const auto comp_end = row_vector(comp_end_in, B, q, "comp_end");
  const auto win_start = row_vector(win_start_in, B, q, "win_start");
  p.comp_start = comp_start ? comp_start->data_ptr<int32_t>() : nullptr;
  p.comp_end = comp_end ? comp_end->data_ptr<int32_t>() : nullptr;
  p.win_start = win_start ? win_start->data_ptr<int32_t>() : nullptr;
  p.scale = static_cast<float>(scale);
  p.num_splits = static_cast<int>(num_splits);
  p.num_stages = static_cast<int>(num_stages);
  p.layout = static_cast<int>(layout);
  p.gather = static_cast<int>(gather);

  Tensor out, lse;
  if (out_opt.has_value() && out_opt->defined()) {
    out = *out_opt;
    check_same_device(out, q, "out");
    TORCH_CHECK(out.scalar_type() == q.scalar_type() && out.dim() == 3 && out.size(0) == B && out.size(1) == Hq &&
                    out.size(2) == D && out.stride(2) == 1,
                "out must be [B, Hq, D] in q's dtype with a contiguous last dim");
  } else {
    out = torch::empty({B, Hq, D}, q.options());
  }
  if (return_lse) {
    if (lse_opt.has_value() && lse_opt->defined()) {
      lse = *lse_opt;
      check_same_device(lse, q, "lse");
      TORCH_CHECK(lse.scalar_type() == torch::kFloat32 && lse.dim() == 2 && lse.size(0) == B && lse.size(1) == Hq &&
                      lse.is_contiguous(),
                  "lse must be a contiguous float32 [B, Hq] tensor");
    } else {
      lse = torch::empty({B, Hq}, q.options().dtype(torch::kFloat32));
    }
  }
  p.out = out.data_ptr();
  p.out_sb = out.stride(0);
  p.out_sh = out.stride(1);
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;

  mustafar::DecodePlan plan;
  const char* err = nullptr;
  cudaError_t e = mustafar::sparse_decode_plan(p, &plan, &err);
  TORCH_CHECK(e == cudaSuccess, "sparse decode attention: ", err ? err : cudaGetErrorString(e));
  Tensor work = torch::empty({std::max<int64_t>(plan.workspace_floats, 1)}, q.options().dtype(torch::kFloat32));
  p.workspace = work.data_ptr<float>();
  e = mustafar::sparse_decode_launch(p, plan, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "sparse decode attention launch failed: ", cudaGetErrorString(e));
  if (return_lse) return {out, lse};
  return {out};
}

std::vector<int64_t> plan_info(const Tensor& q, const Tensor& k_bitmap, int64_t k_k, bool k_variable, int64_t v_k,
                               bool v_variable, int64_t num_splits, int64_t num_stages, int64_t layout,
                               int64_t gather) {
  // Split count / stages / shared memory the kernel would use (for benchmarks and notes).
  const c10::cuda::CUDAGuard guard(q.device());
  mustafar::DecodeParams p;
  p.B = static_cast<int>(q.size(0));
  p.H = static_cast<int>(k_bitmap.size(1));
  p.G = static_cast<int>(q.size(1) / k_bitmap.size(1));
  p.D = static_cast<int>(q.size(2));
  p.T = static_cast<int>(k_bitmap.size(2));
  p.dtype = q.scalar_type() == torch::kBFloat16 ? mustafar::DType::kBFloat16 : mustafar::DType::kFloat16;
  static int32_t dummy_offsets[1];
  p.k.k = static_cast<int>(k_k);
  p.v.k = static_cast<int>(v_k);
  p.k.offsets = k_variable ? dummy_offsets : nullptr;
  p.v.offsets = v_variable ? dummy_offsets : nullptr;
  p.k.bm_st = p.v.bm_st = p.D / 32;
  p.num_splits = static_cast<int>(num_splits);
  p.num_stages = static_cast<int>(num_stages);
  p.layout = static_cast<int>(layout);
  p.gather = static_cast<int>(gather);
  mustafar::DecodePlan plan;
  const char* err = nullptr;
  cudaError_t e = mustafar::sparse_decode_plan(p, &plan, &err);
  TORCH_CHECK(e == cudaSuccess, "plan failed: ", err ? err : cudaGetErrorString(e));
  return {plan.num_splits, plan.num_stages, plan.smem_bytes, plan.win_tile, plan.k_mode, plan.v_mode,
          plan.blocks_per_sm, plan.tile};
}

}  // namespace

void register_compress(pybind11::module& m);  // compress_binding.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_compress(m);
  m.def("sparse_decode_attention", &sparse_decode_attention, "Sparse (bitmap) decode attention, fp16/bf16",
        py::arg("q"), py::arg("k_bitmap"), py::arg("k_values"), py::arg("k_offsets"), py::arg("k_k"),
        py::arg("v_bitmap"), py::arg("v_values"), py::arg("v_offsets"), py::arg("v_k"), py::arg("k_win"),
        py::arg("v_win"), py::arg("n_win"), py::arg("scale"), py::arg("comp_start"), py::arg("comp_end"),
        py::arg("win_start"), py::arg("return_lse"), py::arg("num_splits") = 0, py::arg("num_stages") = 0, py::arg("layout") = 0,
        py::arg("gather") = 0, py::arg("out") = py::none(), py::arg("lse") = py::none());
  m.def("plan_info", &plan_info,
        "Kernel plan (num_splits, num_stages, smem_bytes, win_tile, k_mode, v_mode, blocks_per_sm, tile)", py::arg("q"),
        py::arg("k_bitmap"), py::arg("k_k"), py::arg("k_variable"), py::arg("v_k"), py::arg("v_variable"),
        py::arg("num_splits") = 0, py::arg("num_stages") = 0, py::arg("layout") = 0, py::arg("gather") = 0);
}
