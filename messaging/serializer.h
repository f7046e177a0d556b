// Serializer: the hook through which an application converts its request context and its
// entities (arguments and results) to and from wire Values (oslo.messaging's Serializer).
#pragma once

#include "messaging/value.h"

namespace switchboard {

// The request context: a map of string keys (user, request id, ...), or nil.
using Context = Value;

// Thread-safe; called on client threads and executor threads. The defaults pass values through.
class Serializer {
 public:
  virtual ~Serializer() = default;
  virtual Value serializeContext(const Context& context) const { return context; }
  virtual Context deserializeContext(const Value& wire) const { return wire; }
  virtual Value serializeEntity(const Context& /*context*/, Value entity) const { return entity; }
  virtual Value deserializeEntity(const Context& /*context*/, Value wire) const { return wire; }
};

// The pass-through serializer, used when none is given.
class NoOpSerializer final : public Serializer {};

}  // namespace switchboard
