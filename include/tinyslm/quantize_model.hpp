// tinyslm quantize_model: convert a whole GGUF model to another block type or to one of the
// usual mixes (Q4_K_M and friends), keeping every other tensor and all metadata.
//
// The per-tensor choice follows llama.cpp's llama-quantize without an importance matrix, so
// a file we write matches the one it writes for the same input and type: norms, routers and
// 1-D tensors stay as they are; the output matrix (or the embedding when it is tied to the
// output) gets Q6_K in the K mixes; attn_v and ffn_down of some layers get more bits; a row
// length that does not fit the block size falls back to a smaller block type. Tensors are
// written in llama-quantize's order: non-layer tensors first, then by layer, by name within.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>
#if !defined(TINYSLM_NO_THREADS)
#include <thread>
#endif

#include "core.hpp"
#include "gguf.hpp"
#include "quant.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

// A target: a single type ("Q8_0", "F16") or a mix ("Q4_K_M"); `pure` forces one type.
struct QuantizeOptions {
  std::string target = "Q4_K_M";
  bool pure = false;   // every quantizable tensor gets the target's base type (no mix rules)
  int threads = 1;     // worker threads for the conversion
};

// What happens to one tensor.
struct TensorPlan {
  const GgufTensorInfo* tensor = nullptr;
  TensorType to = TensorType::F32;
  bool quantizable = false;  // a weight matrix (else copied as is)
  bool fell_back = false;    // its row length did not fit the mix's choice
};

namespace detail {

// The mixes llama-quantize names, with llama.cpp's file-type id for general.file_type.
struct QuantMix {
  const char* name;
  uint32_t file_type;
  TensorType base;
};

inline constexpr QuantMix quant_mixes[] = {
    {"F32", 0, TensorType::F32},       {"F16", 1, TensorType::F16},
    {"BF16", 32, TensorType::BF16},    {"Q4_0", 2, TensorType::Q4_0},
    {"Q4_1", 3, TensorType::Q4_1},     {"Q8_0", 7, TensorType::Q8_0},
    {"Q5_0", 8, TensorType::Q5_0},     {"Q5_1", 9, TensorType::Q5_1},
    {"Q2_K", 10, TensorType::Q2_K},    {"Q3_K_S", 11, TensorType::Q3_K},
    {"Q3_K_M", 12, TensorType::Q3_K},  {"Q3_K", 12, TensorType::Q3_K},
    {"Q3_K_L", 13, TensorType::Q3_K},  {"Q4_K_S", 14, TensorType::Q4_K},
    {"Q4_K_M", 15, TensorType::Q4_K},  {"Q4_K", 15, TensorType::Q4_K},
    {"Q5_K_S", 16, TensorType::Q5_K},  {"Q5_K_M", 17, TensorType::Q5_K},
    {"Q5_K", 17, TensorType::Q5_K},    {"Q6_K", 18, TensorType::Q6_K},
    {"IQ4_NL", 25, TensorType::IQ4_NL},
};

inline const QuantMix* find_quant_mix(std::string_view name) {
  for (const auto& m : quant_mixes)
    if (iequals_ascii(m.name, name)) return &m;
  return nullptr;
}

}  // namespace detail

// The name llama.cpp gives a general.file_type value ("Q4_K_M"), or nullptr when unknown.
inline const char* file_type_name(uint32_t file_type) {
  for (const auto& m : detail::quant_mixes)
    if (m.file_type == file_type) return m.name;
  return nullptr;
}

namespace detail {

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
inline bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// Layer index from "blk.N.", or -1.
inline int tensor_layer(std::string_view name) {
  if (name.substr(0, 4) != "blk.") return -1;
  int v = 0;
  size_t i = 4;
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) {
    v = v * 10 + (name[i] - '0');
    if (v > 1000000) return -1;
  }
  return (i < name.size() && name[i] == '.') ? v : -1;
}

// Weight matrices are quantized; norms, routers and positional tables are not.
inline bool is_quantizable(const GgufTensorInfo& t) {
  if (t.n_dims < 2) return false;
  const std::string_view n = t.name;
  if (!ends_with(n, "weight")) return false;
  if (contains(n, "_norm.weight")) return false;
  if (contains(n, "ffn_gate_inp.weight")) return false;
  if (n == "position_embd.weight" || n == "token_types.weight") return false;
  if (contains(n, "ssm_conv1d")) return false;
  return true;
}

inline bool is_block_quantized(TensorType t) { return tensor_type_info(t).block_size > 1; }

// llama-quantize's choice of extra bits for the first, last and every third layer.
inline bool more_bits_layer(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

inline TensorType fallback_type(TensorType t) {
  switch (t) {
    case TensorType::Q2_K:
    case TensorType::Q3_K: return TensorType::Q4_0;
    case TensorType::Q4_K: return TensorType::Q5_0;
    case TensorType::Q5_K: return TensorType::Q5_1;
    case TensorType::Q6_K: return TensorType::Q8_0;
    default: return TensorType::F16;
  }
}

inline uint32_t first_u32(const GgufFile& f, const std::string& key, uint32_t fallback) {
  const GgufKv* kv = f.find(key);
  if (!kv) return fallback;
  if (kv->value.type() == GgufValueType::array) {
    GgufArray a = kv->value.as_array();
    if (a.size() == 0 || !detail::gguf_is_integer(a.element_type())) return fallback;
    uint32_t out = fallback;
    a.for_each([&](const GgufValue& v) {
      uint64_t u = 0;
      if (v.as_uint64(&u)) out = static_cast<uint32_t>(u);
      return false;
    });
    return out;
  }
  uint64_t u = 0;
  return kv->value.as_uint64(&u) ? static_cast<uint32_t>(u) : fallback;
}

}  // namespace detail

namespace detail {

// llama-quantize's per-tensor choices (no importance matrix), with the counters they keep over
// the tensors in write order.
struct MixChooser {
  const QuantMix& mix;
  std::string_view m;  // the mix's name
  bool tied = false;
  uint32_t n_layer = 0, n_gqa = 1, n_expert = 0;
  int n_attn_v = 0, i_attn_v = 0, i_ffn_down = 0;

  bool k_m() const { return m == "Q4_K_M" || m == "Q4_K" || m == "Q5_K_M" || m == "Q5_K"; }
  static bool is_attn_v(std::string_view n) {
    return contains(n, "attn_v.weight") || contains(n, "attn_qkv.weight") || contains(n, "attn_kv_b.weight");
  }

  TensorType attn_v(TensorType to) {
    if (m == "Q2_K") to = n_gqa >= 4 ? TensorType::Q4_K : TensorType::Q3_K;
    else if (m == "Q3_K_M" || m == "Q3_K") to = i_attn_v < 2 ? TensorType::Q5_K : TensorType::Q4_K;
    else if (m == "Q3_K_L") to = TensorType::Q5_K;
    else if (m == "IQ4_NL" && n_gqa >= 4) to = TensorType::Q5_K;
    else if (k_m() && more_bits_layer(i_attn_v, n_attn_v)) to = TensorType::Q6_K;
    else if (m == "Q4_K_S" && i_attn_v < 4) to = TensorType::Q5_K;
    if (n_expert == 8) to = TensorType::Q8_0;
    ++i_attn_v;
    return to;
  }

  TensorType ffn_down(std::string_view n, TensorType to) {
    int layer = i_ffn_down;
    if (n_expert > 1) layer = std::max(0, tensor_layer(n));
    const int nl = static_cast<int>(n_layer);
    if (m == "Q2_K") to = TensorType::Q3_K;
    else if (m == "Q3_K_M" || m == "Q3_K") to = layer < nl / 16 ? TensorType::Q5_K : TensorType::Q4_K;  // non-falcon rule
    else if (m == "Q3_K_L") to = TensorType::Q5_K;
    else if ((m == "Q4_K_M" || m == "Q4_K") && more_bits_layer(layer, nl)) to = TensorType::Q6_K;
    else if (m == "IQ4_NL" && layer < nl / 8) to = TensorType::Q5_K;
    else if ((m == "Q5_K_M" || m == "Q5_K") && more_bits_layer(layer, nl)) to = TensorType::Q6_K;
    else if (m == "Q4_K_S" && layer < nl / 8) to = TensorType::Q5_K;
    ++i_ffn_down;
    return to;
  }

  TensorType attn_output(TensorType to) const {
    if (n_expert == 8) {
      if (m == "Q2_K" || m == "Q3_K_S" || m == "Q3_K_M" || m == "Q3_K" || m == "IQ4_NL" || m == "Q4_K_S" ||
          m == "Q4_K_M" || m == "Q4_K")
        to = TensorType::Q5_K;
    } else if (m == "Q2_K") {
      to = TensorType::Q3_K;
    } else if (m == "Q3_K_M" || m == "Q3_K") {
      to = TensorType::Q4_K;
    } else if (m == "Q3_K_L") {
      to = TensorType::Q5_K;
    }
    return to;
  }

  // The mix's type for one tensor (before the block-size fallback).
  TensorType choose(const GgufTensorInfo& t) {
    const std::string_view n = t.name;
    TensorType to = mix.base;
    const bool is_output = n == "output.weight", is_embd = n == "token_embd.weight";
    if (is_output || (tied && is_embd)) {
      if (t.ne[0] % tensor_type_info(to).block_size != 0) to = TensorType::Q8_0;
      else if (to != TensorType::Q8_0) to = TensorType::Q6_K;
    } else if (is_embd) {
      // an untied embedding keeps the base type
    } else if (is_attn_v(n)) {
      to = attn_v(to);
    } else if (contains(n, "attn_k.weight")) {
      if (n_expert == 8) to = TensorType::Q8_0;
    } else if (contains(n, "ffn_down")) {
      to = ffn_down(n, to);
    } else if (contains(n, "attn_output.weight")) {
      to = attn_output(to);
    }
    return to;
  }
};

// Rows that are not whole blocks of the chosen type fall back to a wider type, then F16.
inline TensorType fit_block(const GgufTensorInfo& t, TensorType to, bool* fell_back) {
  if (is_block_quantized(to) && t.ne[0] % tensor_type_info(to).block_size != 0) {
    to = fallback_type(to);
    if (t.ne[0] % tensor_type_info(to).block_size != 0) to = TensorType::F16;
    *fell_back = true;
  }
  return to;
}

}  // namespace detail

// The type each tensor of `in` gets, in the order they will be written.
inline Expected<std::vector<TensorPlan>> plan_quantization(const GgufFile& in, const QuantizeOptions& opt) {
  const detail::QuantMix* mix = detail::find_quant_mix(opt.target);
  if (!mix) return make_error(Errc::invalid_argument, "unknown quantization type '" + opt.target + "'");
  if (!quant_traits(mix->base))
    return make_error(Errc::unsupported, "quantization to " + std::string(mix->name) + " is not supported");

  const std::string arch = in.get_or<std::string>("general.architecture", "").value_or("");
  detail::MixChooser chooser{*mix, mix->name};
  chooser.n_layer = detail::first_u32(in, arch + ".block_count", 0);
  const uint32_t n_head = detail::first_u32(in, arch + ".attention.head_count", 1);
  const uint32_t n_head_kv = detail::first_u32(in, arch + ".attention.head_count_kv", n_head);
  chooser.n_expert = detail::first_u32(in, arch + ".expert_count", 0);
  chooser.n_gqa = n_head_kv ? n_head / n_head_kv : 1;
  chooser.tied = in.find_tensor("output.weight") == nullptr;

  std::vector<TensorPlan> plan;
  for (const auto& t : in.tensors()) plan.push_back({&t, t.type, detail::is_quantizable(t), false});
  std::stable_sort(plan.begin(), plan.end(), [](const TensorPlan& a, const TensorPlan& b) {
    const int la = detail::tensor_layer(a.tensor->name), lb = detail::tensor_layer(b.tensor->name);
    return la != lb ? la < lb : a.tensor->name < b.tensor->name;
  });
  for (const auto& p : plan) chooser.n_attn_v += detail::MixChooser::is_attn_v(p.tensor->name);

  for (auto& p : plan) {
    if (!p.quantizable) continue;
    const std::string_view n = p.tensor->name;
    TensorType to = mix->base;
    if (detail::is_block_quantized(mix->base) && !opt.pure) to = chooser.choose(*p.tensor);
    to = detail::fit_block(*p.tensor, to, &p.fell_back);
    if (!quant_traits(to))
      return make_error(Errc::unsupported, "tensor " + detail::quoted(n) + " would need type " +
                                               tensor_type_name(to) + ", which is not supported");
    if (to != p.tensor->type && !quant_traits(p.tensor->type))
      return make_error(Errc::unsupported, "tensor " + detail::quoted(n) + " has type " +
                                               tensor_type_name(p.tensor->type) +
                                               ", which cannot be converted");
    p.to = to;
  }
  return plan;
}

// Converts `in` and writes the result to `out_path`.
inline Status quantize_model(const GgufFile& in, const std::string& out_path, const QuantizeOptions& opt) {
  auto plan = plan_quantization(in, opt);
  if (!plan) return plan.error();
  const detail::QuantMix* mix = detail::find_quant_mix(opt.target);

  GgufWriter w;
  w.copy_metadata(in);
  w.set_u32("general.quantization_version", 2);
  w.set_u32("general.file_type", mix->file_type);

  const int threads = std::max(1, opt.threads);
  for (const auto& p : *plan) {
    const GgufTensorInfo& t = *p.tensor;
    std::span<const uint64_t> shape(t.ne.data(), t.n_dims);
    if (p.to == t.type) {
      auto st = w.add_tensor_generated(t.name, t.type, shape, [&t](uint8_t* out, size_t bytes) {
        std::memcpy(out, t.data, bytes);
      });
      if (!st) return st;
      continue;
    }
    const TensorType to = p.to;
    auto st = w.add_tensor_generated(t.name, to, shape, [&t, to, threads](uint8_t* out, size_t) {
      const int64_t cols = static_cast<int64_t>(t.ne[0]);
      const int64_t rows = static_cast<int64_t>(t.n_elements / t.ne[0]);
      uint64_t in_row = 0, out_row = 0;
      tensor_row_bytes(t.type, t.ne[0], &in_row);
      tensor_row_bytes(to, t.ne[0], &out_row);
      auto work = [&](int64_t r0, int64_t r1) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          (void)dequantize_row(t.type, t.data + static_cast<uint64_t>(r) * in_row, row.data(), cols);
          (void)quantize_row(to, row.data(), out + static_cast<uint64_t>(r) * out_row, cols);
        }
      };
#if !defined(TINYSLM_NO_THREADS)
      if (threads > 1 && rows >= 2 * threads) {
        std::vector<std::thread> pool;
        for (int i = 0; i < threads; ++i) {
          int64_t b, e;
          ParallelFor::split(rows, i, threads, 1, &b, &e);
          pool.emplace_back(work, b, e);
        }
        for (auto& th : pool) th.join();
        return;
      }
#endif
      work(0, rows);
    });
    if (!st) return st;
  }
  return w.write_file(out_path);
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
