// Helpers the callbacks share: Python's number formatting (Keras's messages and file names are
// f-strings), JSON for doubles that may not be finite, and key lists.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace kiln {
namespace callbacks {
namespace detail {

// Python's repr(float): the shortest string that reads back to the same double, with ".0" on
// integral values and "nan", "inf", "-inf" (what Keras prints for `{lr}`).
inline std::string python_repr(double v) {
    if (std::isnan(v))
        return "nan";
    std::string s = fmt::format("{}", v);
    if (s.find_first_of(".eni") == std::string::npos)
        s += ".0";
    return s;
}

// Python's f"{v:.5f}" (Keras's "improved from 0.34120 to 0.32530"): "nan" whatever its sign bit.
inline std::string python_fixed5(double v) {
    if (std::isnan(v))
        return "nan";
    return fmt::format("{:.5f}", v);
}

// A JSON value for a double: a number when finite, else the string "nan", "inf" or "-inf".
inline nlohmann::json json_double(double v) {
    if (std::isfinite(v))
        return v;
    return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

inline double double_from_json(const nlohmann::json& j) {
    if (j.is_number())
        return j.get<double>();
    const std::string s = j.get<std::string>();
    if (s == "inf")
        return INFINITY;
    if (s == "-inf")
        return -INFINITY;
    return NAN;
}

inline nlohmann::json json_optional(const std::optional<double>& v) {
    return v ? json_double(*v) : nlohmann::json();
}

inline std::optional<double> optional_from_json(const nlohmann::json& j) {
    if (j.is_null())
        return std::nullopt;
    return double_from_json(j);
}

// "loss,accuracy": Keras's ','.join(logs.keys()).
inline std::string join(const std::vector<std::string>& keys, const std::string& sep) {
    std::string out;
    for (const auto& k : keys)
        out += (out.empty() ? "" : sep) + k;
    return out;
}

inline bool contains(const std::vector<std::string>& keys, const std::string& key) {
    for (const auto& k : keys) {
        if (k == key)
            return true;
    }
    return false;
}

// Parses a callback's state JSON, naming the callback on failure.
nlohmann::json parse_state(const std::string& json, const std::string& who);

}  // namespace detail
}  // namespace callbacks
}  // namespace kiln

namespace kiln {
namespace callbacks {
namespace detail {

// A log value in a filepath template: formatted by its spec as a double, and like Python's
// str(float) when the spec is empty ("{val_loss}" gives "0.4182", "{loss}" of 1 gives "1.0").
struct PyFloat {
    double value;
};

// The names a Python format template uses ("{epoch:02d}-{val_loss:.2f}.h5" gives epoch,
// val_loss); fills `error` for a malformed template or a positional field.
std::vector<std::string> template_fields(const std::string& text, std::string* error);

}  // namespace detail
}  // namespace callbacks
}  // namespace kiln

template <>
struct fmt::formatter<kiln::callbacks::detail::PyFloat> : fmt::formatter<double> {
    bool empty_spec = true;
    template <typename ParseContext>
    constexpr auto parse(ParseContext& ctx) {
        empty_spec = ctx.begin() == ctx.end() || *ctx.begin() == '}';
        return fmt::formatter<double>::parse(ctx);
    }
    template <typename FormatContext>
    auto format(const kiln::callbacks::detail::PyFloat& f, FormatContext& ctx) const {
        if (empty_spec) {
            const std::string text = kiln::callbacks::detail::python_repr(f.value);
            return std::copy(text.begin(), text.end(), ctx.out());
        }
        return fmt::formatter<double>::format(f.value, ctx);
    }
};
