// LoRA adapters in llama.cpp's adapter GGUF layout: loading and validation against a Model.
// Applying them in the forward pass is not wired yet (see the issue 13 report).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core.hpp"
#include "gguf.hpp"
#include "model.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// One adapted weight: y = W x + s * B (A x), s = scale * alpha / rank (alpha 0: s = scale).
struct LoraPair {
  std::string base;                  // the base weight's tensor name
  const GgufTensorInfo* a = nullptr;  // ne = [n_in, rank]
  const GgufTensorInfo* b = nullptr;  // ne = [rank, n_out]
  uint64_t rank() const { return b->ne[0]; }
};

class Adapter {
 public:
  // Opens and checks the file against `model`; the model must outlive nothing here, but the
  // shapes are only valid for the model it was checked against.
  static Expected<Adapter> open(const std::string& path, const Model& model) {
    auto f = GgufFile::open(path);
    if (!f) return f.error();
    return from_gguf(std::move(*f), model);
  }
  // Caller-owned bytes: they must outlive the Adapter.
  static Expected<Adapter> from_memory(const void* data, size_t size, const Model& model,
                                       std::string name = "<memory>") {
    auto f = GgufFile::from_memory(data, size, std::move(name));
    if (!f) return f.error();
    return from_gguf(std::move(*f), model);
  }
  static Expected<Adapter> from_gguf(GgufFile file, const Model& model);

  Adapter(Adapter&&) = default;
  Adapter& operator=(Adapter&&) = default;

  const std::string& name() const { return file_.name(); }
  const GgufFile& gguf() const { return file_; }
  float alpha() const { return alpha_; }
  const std::vector<LoraPair>& pairs() const { return pairs_; }
  // The factor applied to B (A x) at a user scale.
  float factor(const LoraPair& p, float scale) const {
    return alpha_ == 0.0f ? scale : scale * alpha_ / static_cast<float>(p.rank());
  }

 private:
  explicit Adapter(GgufFile f) : file_(std::move(f)) {}
  Status check_header(const Model& model);
  Status collect_pairs(const Model& model);

  GgufFile file_;
  float alpha_ = 0.0f;
  std::vector<LoraPair> pairs_;
};

namespace detail {

inline bool lora_type_ok(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16 ||
         t == TensorType::Q8_0;
}

// The layer index of "blk.N.…", or -1.
inline int64_t lora_layer_of(std::string_view name) {
  if (name.substr(0, 4) != "blk.") return -1;
  int64_t n = 0;
  size_t i = 4;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) {
    n = n * 10 + (name[i] - '0');
    if (n > (1 << 20)) return -1;
  }
  return (i == 4 || i >= name.size() || name[i] != '.') ? -1 : n;
}

inline Status check_lora_pair(const std::string& file, const LoraPair& p,
                              const GgufTensorInfo& w) {
  for (const GgufTensorInfo* t : {p.a, p.b}) {
    if (!lora_type_ok(t->type) || t->n_dims != 2)
      return make_error(Errc::unsupported, file + ": tensor " + detail::quoted(t->name) +
                                               " must be a 2-D F32, F16, BF16 or Q8_0 tensor");
  }
  const bool ok = p.a->ne[0] == w.ne[0] && p.b->ne[1] == w.ne[1] && p.a->ne[1] == p.b->ne[0] &&
                  p.a->ne[1] > 0;
  if (!ok)
    return make_error(Errc::invalid_format,
                      file + ": tensor " + detail::quoted(p.base) + ".lora_a " + p.a->shape_string() +
                          " / .lora_b " + p.b->shape_string() + " do not fit base weight " +
                          w.shape_string());
  return {};
}

}  // namespace detail

inline Status Adapter::check_header(const Model& model) {
  auto type = file_.get<std::string>("general.type");
  if (!type || *type != "adapter")
    return make_error(Errc::invalid_format, name() + ": general.type is not \"adapter\"");
  auto atype = file_.get<std::string>("adapter.type");
  if (!atype || *atype != "lora")
    return make_error(Errc::unsupported, name() + ": adapter.type is not \"lora\"");
  auto arch = file_.get<std::string>("general.architecture");
  if (!arch) return arch.error();
  if (*arch != model.hparams().arch_name)
    return make_error(Errc::invalid_argument, name() + ": adapter architecture " + detail::quoted(*arch) +
                                                  " does not match the model's " +
                                                  detail::quoted(model.hparams().arch_name));
  // llama.cpp reads a missing alpha as 0; we require it so a file without it is caught.
  auto alpha = file_.get<float>("adapter.lora.alpha");
  if (!alpha) return make_error(Errc::not_found, name() + ": missing adapter.lora.alpha");
  if (!std::isfinite(*alpha))
    return make_error(Errc::invalid_format, name() + ": adapter.lora.alpha is not finite");
  alpha_ = *alpha;
  return {};
}

inline Status Adapter::collect_pairs(const Model& model) {
  for (const auto& t : file_.tensors()) {
    const bool is_a = detail::ends_with(t.name, ".lora_a");
    if (!is_a && !detail::ends_with(t.name, ".lora_b"))
      return make_error(Errc::invalid_format, name() + ": unknown tensor " + detail::quoted(t.name));
    const int64_t layer = detail::lora_layer_of(t.name);
    if (layer >= model.hparams().n_layer)
      return make_error(Errc::invalid_argument, name() + ": tensor " + detail::quoted(t.name) +
                                                    " names layer " + std::to_string(layer) + " but the model has " +
                                                    std::to_string(model.hparams().n_layer));
    if (!is_a) continue;
    std::string base(t.name.substr(0, t.name.size() - 7));
    LoraPair p{base, &t, file_.find_tensor(base + ".lora_b")};
    if (!p.b) return make_error(Errc::not_found, name() + ": tensor " + detail::quoted(base) + ".lora_b is missing");
    const GgufTensorInfo* w = model.gguf().find_tensor(base);
    if (!w) return make_error(Errc::not_found, name() + ": base weight " + detail::quoted(base) + " is not in the model");
    if (auto st = detail::check_lora_pair(name(), p, *w); !st) return st.error();
    pairs_.push_back(std::move(p));
  }
  for (const auto& t : file_.tensors()) {
    if (!detail::ends_with(t.name, ".lora_b")) continue;
    std::string base(t.name.substr(0, t.name.size() - 7));
    if (!file_.find_tensor(base + ".lora_a"))
      return make_error(Errc::not_found, name() + ": tensor " + detail::quoted(base) + ".lora_a is missing");
  }
  return {};
}

inline Expected<Adapter> Adapter::from_gguf(GgufFile file, const Model& model) {
  Adapter ad(std::move(file));
  if (auto st = ad.check_header(model); !st) return st.error();
  if (auto st = ad.collect_pairs(model); !st) return st.error();
  if (ad.pairs_.empty()) return make_error(Errc::invalid_format, ad.name() + ": no LoRA tensors");
  return ad;
}

}  // namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
