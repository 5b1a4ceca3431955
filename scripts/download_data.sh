#!/usr/bin/env bash
# Fetch CIFAR-10/100 and the six OOD benchmark sets of the paper into one data folder; on request
# (--only openood) check OpenOOD v1.5's CIFAR-10 layout and say how to complete it.
#
# Layout (the conf/*.json files point here):
#   DEST/cifar10/cifar-10-batches-py/   DEST/cifar100/cifar-100-python/   DEST/svhn/test_32x32.mat
#   DEST/dtd/images/ (Textures)         DEST/LSUN/ (LSUN-C)               DEST/LSUN_resize/
#   DEST/iSUN/                          DEST/places365/val_256/ (Places365 val_256 images)
#   OpenOOD v1.5 (conf/openood_cifar10.json, openood_root = DEST/openood):
#   DEST/openood/benchmark_imglist/     DEST/openood/images_classic/{cifar10,cifar100,tin,mnist,svhn,texture,places365}/
#   DEST/openood/results/cifar10_resnet18_32x32_base_e100_lr0.1_default/s{0,1,2}/best.ckpt
#
# OpenOOD's archives are on Google Drive, which a plain download cannot fetch reliably: without
# FEATURENORM_DATA_MIRROR the script only checks them and says where to get each one.
#
# A dataset whose target already exists (a file, or a non-empty folder) is skipped. A failed fetch
# does not stop the others; at the end the script lists what is missing, where to download it by
# hand and where to put it, and exits 1.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: scripts/download_data.sh [DEST] [--dry-run] [--only NAME[,NAME...]] [--keep-archives]

Download the ID and OOD datasets into DEST (default ./data).
  --dry-run         print what would be fetched and where; fetch nothing
  --only LIST       only these datasets (comma separated), from:
                    cifar10 cifar100 svhn textures lsun lsun-resize isun places365 (the default),
                    openood (= all of: openood-imglist openood-cifar10 openood-cifar100
                    openood-tin openood-mnist openood-svhn openood-texture openood-places365
                    openood-checkpoints)
  --keep-archives   keep the downloaded archives in DEST/.downloads after extracting
  -h, --help        this message

Environment:
  FEATURENORM_DATA_TIMEOUT   connect timeout per download, seconds (default 30)
  FEATURENORM_DATA_RETRIES   retries per download after a transient error (default 2)
  FEATURENORM_DATA_MIRROR    fetch every archive as $FEATURENORM_DATA_MIRROR/<archive name>
                             instead of its public URL (a local mirror; file:// works too)
  FEATURENORM_DATA_NO_MD5=1  skip the md5 checks (a mirror with repacked archives); tarballs
                             are still listed before extraction
Exit status: 0 when every requested dataset is present, 1 when some are missing, 2 on bad usage.
EOF
}

ALL_DATASETS=(cifar10 cifar100 svhn textures lsun lsun-resize isun places365)
OPENOOD_PARTS=(openood-imglist openood-cifar10 openood-cifar100 openood-tin openood-mnist openood-svhn
               openood-texture openood-places365 openood-checkpoints)
OPENOOD_CKPT=cifar10_resnet18_32x32_base_e100_lr0.1_default

# spec NAME -> "url|archive|md5|kind|target|present_check|source"
#   kind: file (saved as target) or tar (extracted; `source` inside the archive becomes target,
#   "." meaning the whole extracted tree). md5s of CIFAR, SVHN and DTD are the ones their authors
#   publish (and torchvision checks). The ODIN authors (LSUN, LSUN_resize, iSUN on Dropbox) and
#   Places365 publish none on the download pages; the md5s used for them are the ones the
#   pytorch-ood dataset loaders check. Every archive is also listed (tar -t) before extraction.
#   kind zip: OpenOOD's archives (ids from OpenOOD's scripts/download/download.py; no md5s are
#   published); the url is gdrive:<id>; a zip whose single top-level folder is named `source` is
#   moved onto target, any other zip's whole content becomes target.
spec() {
  case "$1" in
    cifar10) echo "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz|cifar-10-python.tar.gz|c58f30108f718f92721af3b95e74349a|tar|cifar10/cifar-10-batches-py|cifar10/cifar-10-batches-py|cifar-10-batches-py" ;;
    cifar100) echo "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz|cifar-100-python.tar.gz|eb9058c3a382ffc7106e4002c42a8d85|tar|cifar100/cifar-100-python|cifar100/cifar-100-python|cifar-100-python" ;;
    svhn) echo "http://ufldl.stanford.edu/housenumbers/test_32x32.mat|test_32x32.mat|eb5a983be6a315427106f1b8c8a1d6a5|file|svhn/test_32x32.mat|svhn/test_32x32.mat|" ;;
    textures) echo "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz|dtd-r1.0.1.tar.gz|fff73e5086ae6bdbea199a49dfb8a4c1|tar|dtd|dtd/images|dtd" ;;
    lsun) echo "https://www.dropbox.com/s/fhtsw1m3qxlwj6h/LSUN.tar.gz?dl=1|LSUN.tar.gz|458a0a0ab8e5f1cb4516d7400568e460|tar|LSUN|LSUN|LSUN" ;;
    lsun-resize) echo "https://www.dropbox.com/s/moqh2wh8696c3yl/LSUN_resize.tar.gz?dl=1|LSUN_resize.tar.gz|278b7b31c8cb7e804a1465a8ce03a2dc|tar|LSUN_resize|LSUN_resize|LSUN_resize" ;;
    isun) echo "https://www.dropbox.com/s/ssz7qxfqae0cca5/iSUN.tar.gz?dl=1|iSUN.tar.gz|be77b0f2c26fda898afac5f99645ee70|tar|iSUN|iSUN|iSUN" ;;
    places365) echo "http://data.csail.mit.edu/places/places365/val_256.tar|val_256.tar|e27b17d8d44f4af9a78502beb927f808|tar|places365|places365|." ;;
    openood-imglist) echo "gdrive:1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1|benchmark_imglist.zip||zip|openood/benchmark_imglist|openood/benchmark_imglist/cifar10/test_cifar10.txt|benchmark_imglist" ;;
    openood-cifar10) echo "gdrive:1Co32RiiWe16lTaiOU6JMMnyUYS41IlO1|cifar10.zip||zip|openood/images_classic/cifar10|openood/images_classic/cifar10|cifar10" ;;
    openood-cifar100) echo "gdrive:1PGKheHUsf29leJPPGuXqzLBMwl8qMF8_|cifar100.zip||zip|openood/images_classic/cifar100|openood/images_classic/cifar100|cifar100" ;;
    openood-tin) echo "gdrive:1PZ-ixyx52U989IKsMA2OT-24fToTrelC|tin.zip||zip|openood/images_classic/tin|openood/images_classic/tin|tin" ;;
    openood-mnist) echo "gdrive:1CCHAGWqA1KJTFFswuF9cbhmB-j98Y1Sb|mnist.zip||zip|openood/images_classic/mnist|openood/images_classic/mnist|mnist" ;;
    openood-svhn) echo "gdrive:1DQfc11HOtB1nEwqS4pWUFp8vtQ3DczvI|svhn.zip||zip|openood/images_classic/svhn|openood/images_classic/svhn|svhn" ;;
    openood-texture) echo "gdrive:1OSz1m3hHfVWbRdmMwKbUzoU8Hg9UKcam|texture.zip||zip|openood/images_classic/texture|openood/images_classic/texture|texture" ;;
    openood-places365) echo "gdrive:1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay|places365.zip||zip|openood/images_classic/places365|openood/images_classic/places365|places365" ;;
    openood-checkpoints) echo "gdrive:1byGeYxM_PlLjT72wZsMQvP6popJeWBgt|cifar10_res18_v1.5.zip||zip|openood/results/$OPENOOD_CKPT|openood/results/$OPENOOD_CKPT/s0/best.ckpt|$OPENOOD_CKPT" ;;
    *) return 1 ;;
  esac
}

DEST=""
DRY_RUN=0
KEEP_ARCHIVES=0
SELECTED=("${ALL_DATASETS[@]}")
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --keep-archives) KEEP_ARCHIVES=1 ;;
    --only)
      [ $# -ge 2 ] || { echo "error: --only needs a comma-separated list of datasets" >&2; exit 2; }
      IFS=',' read -r -a SELECTED <<< "$2"; shift ;;
    --only=*) IFS=',' read -r -a SELECTED <<< "${1#--only=}" ;;
    -*) echo "error: unknown option '$1'; see --help" >&2; exit 2 ;;
    *)
      [ -z "$DEST" ] || { echo "error: more than one DEST given ('$DEST', '$1'); see --help" >&2; exit 2; }
      DEST="$1" ;;
  esac
  shift
done
DEST="${DEST:-./data}"
DEST="${DEST%/}"
EXPANDED=()
for name in "${SELECTED[@]}"; do
  if [ "$name" = openood ]; then EXPANDED+=("${OPENOOD_PARTS[@]}"); else EXPANDED+=("$name"); fi
done
SELECTED=("${EXPANDED[@]}")
for name in "${SELECTED[@]}"; do
  spec "$name" >/dev/null || { echo "error: unknown dataset '$name'; choose from: ${ALL_DATASETS[*]} openood ${OPENOOD_PARTS[*]}" >&2; exit 2; }
done

CONNECT_TIMEOUT="${FEATURENORM_DATA_TIMEOUT:-30}"
RETRIES="${FEATURENORM_DATA_RETRIES:-2}"
MIRROR="${FEATURENORM_DATA_MIRROR:-}"
DOWNLOADS="$DEST/.downloads"

log() { echo "[data] $*"; }

# present PATH: a file, or a folder with something in it (an empty folder is a leftover).
present() {
  [ -f "$1" ] || { [ -d "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ]; }
}

md5_of() {
  if command -v md5sum >/dev/null 2>&1; then md5sum "$1" | cut -d' ' -f1
  else md5 -q "$1"  # macOS
  fi
}

# public_url URL: a gdrive:<id> spec as the Google Drive address a browser opens.
public_url() {
  case "$1" in
    gdrive:*) echo "https://drive.google.com/uc?export=download&id=${1#gdrive:}" ;;
    *) echo "$1" ;;
  esac
}

# zip_list ARCHIVE / zip_extract ARCHIVE DIR: with unzip, else Python's zipfile.
zip_list() {
  if command -v unzip >/dev/null 2>&1; then unzip -tq "$1" >/dev/null 2>&1
  else python3 -m zipfile -t "$1" >/dev/null 2>&1
  fi
}
zip_extract() {
  if command -v unzip >/dev/null 2>&1; then unzip -q "$1" -d "$2"
  else python3 -m zipfile -e "$1" "$2"
  fi
}

# verify ARCHIVE MD5 KIND: the checksum when known; a tarball or zip must also list without error.
verify() {
  local archive="$1" md5="$2" kind="$3" got
  if [ -n "$md5" ] && [ "${FEATURENORM_DATA_NO_MD5:-0}" != 1 ]; then
    got=$(md5_of "$archive")
    if [ "$got" != "$md5" ]; then
      log "md5 mismatch for $archive: got $got, expected $md5"
      return 1
    fi
  fi
  if [ "$kind" = tar ] && ! tar -tf "$archive" >/dev/null 2>&1; then
    log "$archive does not list as a tar archive (truncated download?)"
    return 1
  fi
  if [ "$kind" = zip ] && ! zip_list "$archive"; then
    log "$archive does not test as a zip archive (truncated download?)"
    return 1
  fi
  return 0
}

# fetch URL OUT: download to OUT.part, rename on success (so OUT is never a partial file).
fetch() {
  local url="$1" out="$2"
  rm -f "$out.part"
  if command -v curl >/dev/null 2>&1; then
    # --speed-limit/--speed-time abort a stalled transfer instead of hanging forever.
    curl -fL --connect-timeout "$CONNECT_TIMEOUT" --retry "$RETRIES" \
         --speed-limit 1024 --speed-time 120 --progress-bar -o "$out.part" "$url" || { rm -f "$out.part"; return 1; }
  elif command -v wget >/dev/null 2>&1; then
    wget -q --show-progress --connect-timeout="$CONNECT_TIMEOUT" --read-timeout=120 \
         --tries="$((RETRIES + 1))" -O "$out.part" "$url" || { rm -f "$out.part"; return 1; }
  else
    log "neither curl nor wget is installed"
    return 1
  fi
  mv "$out.part" "$out"
}

# install_tar ARCHIVE SOURCE TARGET: extract into a scratch folder, then move SOURCE onto TARGET,
# so an interrupted extraction never leaves a half-filled TARGET that a rerun would skip.
install_tar() {
  local archive="$1" source="$2" target="$3" scratch src
  scratch=$(mktemp -d "$DEST/.extract.XXXXXX") || return 1
  if ! tar -xf "$archive" -C "$scratch"; then
    rm -rf "$scratch"; log "could not extract $archive"; return 1
  fi
  if [ "$source" = "." ]; then src="$scratch"; else src="$scratch/$source"; fi
  if [ ! -e "$src" ]; then
    log "$archive has no top-level '$source' (it holds: $(ls "$scratch" | head -5 | tr '\n' ' '))"
    rm -rf "$scratch"; return 1
  fi
  mkdir -p "$(dirname "$target")"
  [ -d "$target" ] && rmdir "$target" 2>/dev/null  # an empty leftover folder
  mv "$src" "$target" || { rm -rf "$scratch"; return 1; }
  # mktemp made the scratch folder 0700; give the moved tree's top the usual umask permissions.
  chmod "$(printf '%o' $((0777 & ~0$(umask))))" "$target"
  [ "$source" = "." ] || rm -rf "$scratch"
  return 0
}

# install_zip ARCHIVE SOURCE TARGET: like install_tar; a zip that holds the single top-level folder
# SOURCE gives that folder, any other zip its whole content.
install_zip() {
  local archive="$1" source="$2" target="$3" scratch src
  scratch=$(mktemp -d "$DEST/.extract.XXXXXX") || return 1
  if ! zip_extract "$archive" "$scratch"; then
    rm -rf "$scratch"; log "could not extract $archive"; return 1
  fi
  if [ "$(ls -A "$scratch")" = "$source" ] && [ -d "$scratch/$source" ]; then src="$scratch/$source"; else src="$scratch"; fi
  mkdir -p "$(dirname "$target")"
  [ -d "$target" ] && rmdir "$target" 2>/dev/null  # an empty leftover folder
  mv "$src" "$target" || { rm -rf "$scratch"; return 1; }
  chmod "$(printf '%o' $((0777 & ~0$(umask))))" "$target"
  [ "$src" = "$scratch" ] || rm -rf "$scratch"
  return 0
}

# manual_hint NAME: how to get NAME by hand, as one line with the commands to run.
manual_hint() {
  local url archive md5 kind target check source into
  IFS='|' read -r url archive md5 kind target check source <<< "$(spec "$1")"
  if [ "$kind" = zip ]; then
    echo "  $1: download $(public_url "$url") as $archive (a browser, or: pip install gdown && gdown ${url#gdrive:}), then unzip it into place so that $DEST/$check exists"
  elif [ "$kind" = file ]; then
    echo "  $1: download $url and save it as $DEST/$target"
  else
    if [ "$source" = "." ]; then into="$DEST/$target"; else into=$(dirname "$DEST/$target"); fi
    # Places365's archive holds a single folder val_256/, which ends up inside places365/.
    local gives="$DEST/$check"
    [ "$source" = "." ] && gives="$DEST/$target/${archive%%.*}"
    echo "  $1: download $url, then: mkdir -p $into && tar -xf $archive -C $into   (gives $gives)"
  fi
}

MISSING=()
for name in "${SELECTED[@]}"; do
  IFS='|' read -r url archive md5 kind target check source <<< "$(spec "$name")"
  [ -n "$MIRROR" ] && url="${MIRROR%/}/$archive"
  if present "$DEST/$check"; then
    log "skip $name: already present at $DEST/$check"
    continue
  fi
  if [ "$DRY_RUN" = 1 ]; then
    case "$url" in
      gdrive:*) log "would need $name by hand: $(public_url "$url") ($archive) -> $DEST/$target" ;;
      *) log "would fetch $name: $url -> $DEST/$target (md5 ${md5:-none published})" ;;
    esac
    continue
  fi
  case "$url" in
    gdrive:*)
      log "missing $name: it is on Google Drive; fetch it by hand (see below) or set FEATURENORM_DATA_MIRROR"
      MISSING+=("$name"); continue ;;
  esac
  mkdir -p "$DOWNLOADS"
  saved="$DOWNLOADS/$archive"
  # Reuse an archive left by an earlier run whose extraction failed, if it verifies.
  if [ -f "$saved" ] && verify "$saved" "$md5" "$kind"; then
    log "$name: reusing $saved"
  else
    rm -f "$saved"
    log "fetch $name: $url (connect timeout ${CONNECT_TIMEOUT}s)"
    if ! fetch "$url" "$saved"; then
      log "FAILED $name: could not download $url"
      MISSING+=("$name"); continue
    fi
    if ! verify "$saved" "$md5" "$kind"; then
      mv -f "$saved" "$saved.bad"
      log "FAILED $name: the download does not verify (kept as $saved.bad)"
      MISSING+=("$name"); continue
    fi
  fi
  if [ "$kind" = file ]; then
    mkdir -p "$(dirname "$DEST/$target")"
    if [ "$KEEP_ARCHIVES" = 1 ]; then cp "$saved" "$DEST/$target"; else mv "$saved" "$DEST/$target"; fi
  elif [ "$kind" = zip ] && install_zip "$saved" "$source" "$DEST/$target"; then
    [ "$KEEP_ARCHIVES" = 1 ] || rm -f "$saved"
  elif [ "$kind" = tar ] && install_tar "$saved" "$source" "$DEST/$target"; then
    [ "$KEEP_ARCHIVES" = 1 ] || rm -f "$saved"
  else
    log "FAILED $name: extraction of $saved failed (the archive is kept; rerun to retry)"
    MISSING+=("$name"); continue
  fi
  log "ok $name -> $DEST/$check"
done
rmdir "$DOWNLOADS" 2>/dev/null

if [ "$DRY_RUN" = 1 ]; then
  log "dry run: nothing was fetched"
  exit 0
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  {
    echo "error: ${#MISSING[@]} dataset(s) missing: ${MISSING[*]}"
    echo "download them by hand and put them in place (then rerun this script to check):"
    case " ${MISSING[*]}" in
      *" openood-"*)
        echo "  openood-*: all at once with OpenOOD's own downloader: git clone https://github.com/Jingkang50/OpenOOD && cd OpenOOD && pip install gdown && python scripts/download/download.py --contents datasets checkpoints --datasets cifar-10 --checkpoints cifar10_res18_v1.5 --save_dir $DEST/openood $DEST/openood/results"
        echo "  or one by one (the paths in benchmark_imglist/*/*.txt, like cifar10/test/airplane/0001.png, are relative to $DEST/openood/images_classic/):" ;;
    esac
    for name in "${MISSING[@]}"; do manual_hint "$name"; done
  } >&2
  exit 1
fi
log "all requested datasets are present under $DEST"
exit 0
