// A small recursive-descent JSON parser producing Values.
// Depth-limited; \u escapes (with surrogate pairs) are decoded to UTF-8.
#include "tools/json.h"

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <string>

namespace switchboard::tools {
namespace {

constexpr int kMaxDepth = 64;

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Result<Value> parseDocument() {
    Result<Value> v = parseValue(0);
    if (!v) return v;
    skipSpace();
    if (pos_ != text_.size()) return fail("trailing characters");
    return v;
  }

 private:
  Status fail(std::string_view what) const {
    return Status(StatusCode::kBadArguments,
                  "invalid JSON at offset " + std::to_string(pos_) + ": " + std::string(what));
  }
  void skipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Result<Value> parseValue(int depth) {
    if (depth > kMaxDepth) return fail("nesting deeper than 64");
    skipSpace();
    if (pos_ >= text_.size()) return fail("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return parseObject(depth);
    if (c == '[') return parseArray(depth);
    if (c == '"') {
      Result<std::string> s = parseString();
      if (!s) return s.status();
      return Value(std::move(s).value());
    }
    if (consume("true")) return Value(true);
    if (consume("false")) return Value(false);
    if (consume("null")) return Value();
    if (c == '-' || (c >= '0' && c <= '9')) return parseNumber();
    return fail("unexpected character");
  }

  Result<Value> parseArray(int depth) {
    ++pos_;  // [
    Array items;
    skipSpace();
    if (consume("]")) return Value(std::move(items));
    for (;;) {
      Result<Value> item = parseValue(depth + 1);
      if (!item) return item;
      items.push_back(std::move(item).value());
      skipSpace();
      if (consume("]")) return Value(std::move(items));
      if (!consume(",")) return fail("expected ',' or ']'");
    }
  }

  Result<Value> parseObject(int depth) {
    ++pos_;  // {
    Map entries;
    skipSpace();
    if (consume("}")) return Value(std::move(entries));
    for (;;) {
      skipSpace();
      if (pos_ >= text_.size() || text_[pos_] != '"') return fail("expected a string key");
      Result<std::string> key = parseString();
      if (!key) return key.status();
      skipSpace();
      if (!consume(":")) return fail("expected ':'");
      Result<Value> item = parseValue(depth + 1);
      if (!item) return item;
      entries.emplace_back(Value(std::move(key).value()), std::move(item).value());
      skipSpace();
      if (consume("}")) return Value(std::move(entries));
      if (!consume(",")) return fail("expected ',' or '}'");
    }
  }

  Result<uint32_t> parseHex4() {
    if (pos_ + 4 > text_.size()) return fail("short \\u escape");
    uint32_t v = 0;
    auto [p, ec] = std::from_chars(text_.data() + pos_, text_.data() + pos_ + 4, v, 16);
    if (ec != std::errc() || p != text_.data() + pos_ + 4) return fail("bad \\u escape");
    pos_ += 4;
    return v;
  }

  static void appendUtf8(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  Result<std::string> parseString() {
    ++pos_;  // opening quote
    std::string out;
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          Result<uint32_t> cp = parseHex4();
          if (!cp) return cp.status();
          uint32_t code = *cp;
          if (code >= 0xD800 && code <= 0xDBFF) {
            if (!consume("\\u")) return fail("lone high surrogate");
            Result<uint32_t> low = parseHex4();
            if (!low) return low.status();
            if (*low < 0xDC00 || *low > 0xDFFF) return fail("bad low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (*low - 0xDC00);
          } else if (code >= 0xDC00 && code <= 0xDFFF) {
            return fail("lone low surrogate");
          }
          appendUtf8(code, out);
          break;
        }
        default:
          return fail("bad escape");
      }
    }
    return fail("unterminated string");
  }

  Result<Value> parseNumber() {
    const size_t start = pos_;
    if (text_[pos_] == '-') ++pos_;
    auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    const size_t intStart = pos_;
    if (digits() == 0) return fail("expected digits");
    if (text_[intStart] == '0' && pos_ - intStart > 1) return fail("leading zero");
    bool integral = true;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      ++pos_;
      integral = false;
      if (digits() == 0) return fail("expected digits after '.'");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      integral = false;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (digits() == 0) return fail("expected exponent digits");
    }
    const std::string number(text_.substr(start, pos_ - start));
    if (integral) {
      int64_t i = 0;
      auto [p, ec] = std::from_chars(number.data(), number.data() + number.size(), i);
      if (ec == std::errc()) return Value(i);
      uint64_t u = 0;
      auto [q, ec2] = std::from_chars(number.data(), number.data() + number.size(), u);
      if (ec2 == std::errc()) return Value(u);
    }
    errno = 0;
    const double d = std::strtod(number.c_str(), nullptr);
    if (errno == ERANGE) return fail("number out of range");
    return Value(d);
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

Result<Value> parseJson(std::string_view text) { return Parser(text).parseDocument(); }

}  // namespace switchboard::tools
