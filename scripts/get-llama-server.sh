#!/usr/bin/env bash
# Gets llama.cpp's llama-server from Debian sid's binary packages and runs it
# through sid's own loader, so nothing is installed system-wide (bookworm has
# no llama.cpp and sid's binaries need a newer glibc). Prints the wrapper path.
# Idempotent: a working cached wrapper is reused.
set -euo pipefail
cache=${LLORCH_CACHE:-$HOME/.cache/llorch}
dir=$cache/engines/llama
wrapper=$cache/bin/llama-server
if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
  echo "$wrapper"; exit 0
fi
rm -rf "$dir"
mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/root" "$dir/debs" "$cache/bin"
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=http://deb.debian.org/debian
echo "deb $uri sid main" > "$dir/apt/sources.list"
APT=(-o Dir::Etc::sourcelist="$dir/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent
     -o Dir::State::Lists="$dir/apt/lists" -o Dir::Cache="$dir/apt/cache" -o APT::Sandbox::User=root)
apt-get "${APT[@]}" -qq update >&2
# Sid moves: when a soname changes the ldd check below fails loudly; fix the list here.
pkgs=(llama.cpp-tools libllama0 libggml0 libc6 libstdc++6 libgcc-s1 libgomp1 libssl3t64)
(cd "$dir/debs" && apt-get "${APT[@]}" -qq download "${pkgs[@]}" >&2)
for d in "$dir"/debs/*.deb; do dpkg-deb -x "$d" "$dir/root"; done
L=$dir/root/usr/lib/x86_64-linux-gnu
# ggml looks for CPU backends next to the executable, which is the loader here.
for so in "$L"/ggml/backends*/libggml-cpu-*.so; do ln -sf "$so" "$L/"; done
cat > "$wrapper.tmp" <<WRAP
#!/bin/sh
exec "$L/ld-linux-x86-64.so.2" --library-path "$L:$L/llama" "$dir/root/usr/bin/llama-server" "\$@"
WRAP
chmod +x "$wrapper.tmp"
if "$L/ld-linux-x86-64.so.2" --library-path "$L:$L/llama" --list "$dir/root/usr/bin/llama-server" | grep 'not found' >&2; then
  echo "get-llama-server: missing libraries (see above); sid changed a soname" >&2; exit 1
fi
mv "$wrapper.tmp" "$wrapper"
"$wrapper" --version >&2
echo "$wrapper"
