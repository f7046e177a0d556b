// switchboard-keygen: makes a CURVE key pair for switchboard-server and switchboard-call.
// Writes OUT_PREFIX.key (the secret, mode 0600) and OUT_PREFIX.pub (the public key, 0644).
#include <CLI/CLI.hpp>
#include <iostream>
#include <string>

#include "transports/zmq_transport.h"

using namespace switchboard;

int main(int argc, char** argv) {
  CLI::App app(
      "switchboard-keygen: make a CURVE key pair as Z85 key files.\n"
      "Writes OUT_PREFIX.key (secret, mode 0600) and OUT_PREFIX.pub (public); never replaces a\n"
      "file. Give the .pub of a server to its clients (--curve-server-key), and the .pub of a\n"
      "client to the servers that admit it (--allow-clients).");
  std::string prefix;
  app.add_option("OUT_PREFIX", prefix, "path prefix of the two files")->required();
  CLI11_PARSE(app, argc, argv);

  Result<CurveKeyPair> pair = makeCurveKeyPair();
  if (!pair) {
    std::cerr << "switchboard-keygen: " << pair.status() << "\n";
    return 1;
  }
  const std::string secretPath = prefix + ".key";
  const std::string publicPath = prefix + ".pub";
  if (Status s = writeZ85KeyFile(secretPath, pair->secretKey, 0600); !s) {
    std::cerr << "switchboard-keygen: " << s << "\n";
    return 1;
  }
  if (Status s = writeZ85KeyFile(publicPath, pair->publicKey, 0644); !s) {
    std::cerr << "switchboard-keygen: " << s << "\n";
    return 1;
  }
  std::cout << pair->publicKey << std::endl;
  return 0;
}
