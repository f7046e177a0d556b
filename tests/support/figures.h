// Figures of the process-level suites (faults, soak): each is a gtest XML property (read into
// docs/RELIABILITY.md), and the whole goes to stdout as one line "<suite> <case>: k=v k=v".
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>

#include "base/deadline.h"

namespace switchboard::testing {

inline double msOf(Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

inline std::string ms1(Duration d) {  // "12.3"
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", msOf(d));
  return text;
}

class Figures {
 public:
  Figures(std::string suite, std::string name) : suite_(std::move(suite)), name_(std::move(name)) {}
  ~Figures() { std::cout << suite_ << " " << name_ << ":" << line_ << std::endl; }
  Figures(const Figures&) = delete;
  Figures& operator=(const Figures&) = delete;

  void add(const std::string& key, const std::string& value) {
    ::testing::Test::RecordProperty(key, value);
    line_ += " " + key + "=" + value;
  }
  void add(const std::string& key, int64_t value) { add(key, std::to_string(value)); }
  void add(const std::string& key, Duration value) { add(key + "_ms", ms1(value)); }

 private:
  const std::string suite_;
  const std::string name_;
  std::string line_;
};

}  // namespace switchboard::testing
