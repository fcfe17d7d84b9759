-- Wireshark dissector for the udpxfer wire format, version 2 (docs/PROTOCOL.md, udpxfer/protocol/wire.py).
--
-- Load it for one run:      wireshark -X lua_script:contrib/udpxfer.lua
--                           tshark -X lua_script:contrib/udpxfer.lua -r capture.pcap
-- or copy it to the personal Lua plugins folder (Help > About Wireshark > Folders), e.g.
-- ~/.local/lib/wireshark/plugins/.
--
-- Every datagram is a 40-byte header, a body and a trailer: a CRC-32 (zlib) of every byte before
-- it, or with KEYED (0x04) a 16-byte AES-GCM tag; with ENCRYPTED (0x08) the body is ciphertext.
-- The CRC is verified here (bad ones get an expert error); a tag cannot be checked without the key.
-- The dissector claims UDP port 9000 (a preference) and recognises udpxfer on any other port by
-- its magic and version (a heuristic). A UDP GSO super-datagram, captured on loopback before the
-- kernel cut it, is split into its equal-sized DATA segments.

local udpx = Proto("udpxfer", "udpxfer file transfer")

local HEADER_BYTES = 40
local CRC_BYTES = 4
local TAG_BYTES = 16
local MAGIC = "UDPX"
local VERSION = 2

-- Enumerations (udpxfer/protocol/wire.py).
local TYPE_NAMES = {
    [1] = "META", [2] = "DATA", [3] = "END", [4] = "STATUS", [5] = "NACK",
    [6] = "DONE", [7] = "ABORT", [8] = "HELLO", [9] = "MANIFEST", [10] = "HAVE",
}
local META, DATA, END, STATUS, NACK, DONE, ABORT, HELLO, MANIFEST, HAVE = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10

local F_RESENT, F_ACK_REQUESTED, F_KEYED, F_ENCRYPTED = 0x01, 0x02, 0x04, 0x08
local KNOWN_FLAGS = 0x0f
local DATA_ONLY_FLAGS = 0x03

local HELLO_FLAG_NAMES = {
    { 0x01, "RETRY" }, { 0x02, "ACCEPTED" }, { 0x04, "RESUMING" },
    { 0x08, "NEED_KEY" }, { 0x10, "NO_KEY" }, { 0x20, "AUTH_FAILED" },
}
local KNOWN_HELLO_FLAGS = 0x3f

local RANGE_KINDS = { [0] = "chunks", [1] = "manifest blocks" }
local MODES = { [0] = "reliable", [1] = "blast" }
local VERDICTS = { [0] = "VERIFIED", [1] = "MISMATCH", [2] = "INCOMPLETE" }
local ABORT_CODES = { [1] = "CANCELLED", [2] = "REFUSED", [3] = "PROTOCOL", [4] = "TIMEOUT", [5] = "BUSY", [6] = "CLOSED" }
local CHECK_STATUS = { [0] = "Bad", [1] = "Good", [2] = "Unverified" }

-- Body sizes (fixed parts).
local META_BYTES = 99
local END_BYTES = 16
local STATUS_BYTES = 40
local RANGES_HEAD_BYTES = 11
local RANGE_BYTES = 16
local DONE_BYTES = 49
local ABORT_BYTES = 11
local HELLO_BYTES = 53
local SHA256_BYTES = 32
local MANIFEST_HASHES = 40

-- Fields.
local f = {
    magic = ProtoField.string("udpxfer.magic", "Magic"),
    version = ProtoField.uint8("udpxfer.version", "Version"),
    type = ProtoField.uint8("udpxfer.type", "Type", base.DEC, TYPE_NAMES),
    flags = ProtoField.uint8("udpxfer.flags", "Flags", base.HEX),
    flag_resent = ProtoField.bool("udpxfer.flags.resent", "RESENT (not the chunk's first transmission)", 8, nil, F_RESENT),
    flag_ack = ProtoField.bool("udpxfer.flags.ack_requested", "ACK_REQUESTED (answer with a STATUS now)", 8, nil, F_ACK_REQUESTED),
    flag_keyed = ProtoField.bool("udpxfer.flags.keyed", "KEYED (trailer is a 16-byte AEAD tag)", 8, nil, F_KEYED),
    flag_encrypted = ProtoField.bool("udpxfer.flags.encrypted", "ENCRYPTED (body is ciphertext)", 8, nil, F_ENCRYPTED),
    pass_no = ProtoField.uint8("udpxfer.pass", "Pass", base.DEC),
    session = ProtoField.uint64("udpxfer.session", "Session", base.HEX),
    seq = ProtoField.uint64("udpxfer.seq", "Seq", base.DEC),
    chunk = ProtoField.uint64("udpxfer.chunk", "Chunk index", base.DEC),
    round = ProtoField.uint64("udpxfer.round", "Round", base.DEC),
    copy = ProtoField.uint64("udpxfer.copy", "META copy", base.DEC),
    first_block = ProtoField.uint64("udpxfer.first_block", "First block", base.DEC),
    pn = ProtoField.uint64("udpxfer.pn", "Packet number", base.DEC),
    sent_ns = ProtoField.uint64("udpxfer.sent_ns", "Sent (sender's monotonic clock, ns)", base.DEC),
    body = ProtoField.bytes("udpxfer.body", "Body"),
    encrypted = ProtoField.bytes("udpxfer.encrypted", "Encrypted body"),
    check = ProtoField.uint32("udpxfer.check", "CRC-32", base.HEX),
    check_status = ProtoField.uint8("udpxfer.check.status", "CRC-32 status", base.DEC, CHECK_STATUS),
    tag = ProtoField.bytes("udpxfer.tag", "AEAD tag"),
    segments = ProtoField.uint32("udpxfer.gso.segments", "GSO segments", base.DEC),
    segment_bytes = ProtoField.uint32("udpxfer.gso.segment_bytes", "GSO segment size", base.DEC),

    -- shared body fields
    echo_ns = ProtoField.uint64("udpxfer.echo_ns", "Echo (sent_ns answered, 0: none)", base.DEC),
    held = ProtoField.uint64("udpxfer.held", "Chunks held", base.DEC),
    window = ProtoField.uint32("udpxfer.window", "Window (datagrams)", base.DEC),
    sha256 = ProtoField.bytes("udpxfer.sha256", "SHA-256"),
    token = ProtoField.bytes("udpxfer.token", "Address token"),
    nonce = ProtoField.bytes("udpxfer.nonce", "Nonce"),
    chunks_sent = ProtoField.uint64("udpxfer.chunks_sent", "Chunks of the first pass sent", base.DEC),

    -- META
    meta_size = ProtoField.uint64("udpxfer.meta.size", "File size", base.DEC),
    meta_chunk_size = ProtoField.uint32("udpxfer.meta.chunk_size", "Chunk size", base.DEC),
    meta_chunk_count = ProtoField.uint64("udpxfer.meta.chunk_count", "Chunk count", base.DEC),
    meta_block_chunks = ProtoField.uint32("udpxfer.meta.block_chunks", "Chunks per manifest block", base.DEC),
    meta_mtime_ns = ProtoField.uint64("udpxfer.meta.mtime_ns", "Source modification time (ns)", base.DEC),
    meta_mode = ProtoField.uint8("udpxfer.meta.mode", "Mode", base.DEC, MODES),
    meta_name_len = ProtoField.uint16("udpxfer.meta.name_len", "Name length", base.DEC),
    meta_name = ProtoField.string("udpxfer.meta.name", "Name", base.UNICODE),

    -- DATA
    data_len = ProtoField.uint32("udpxfer.data.len", "Chunk length", base.DEC),
    data_payload = ProtoField.bytes("udpxfer.data.payload", "Chunk bytes"),

    -- END
    end_tx_sent = ProtoField.uint64("udpxfer.end.tx_sent", "DATA datagrams sent", base.DEC),

    -- STATUS
    status_highest = ProtoField.int64("udpxfer.status.highest_tx", "Highest DATA pn seen (-1: none)", base.DEC),
    status_received = ProtoField.uint64("udpxfer.status.received", "DATA datagrams received", base.DEC),
    status_queued_ns = ProtoField.uint32("udpxfer.status.queued_ns", "Queued at the receiver (ns)", base.DEC),

    -- NACK, HAVE
    ranges_kind = ProtoField.uint8("udpxfer.ranges.kind", "Range kind", base.DEC, RANGE_KINDS),
    ranges_count = ProtoField.uint16("udpxfer.ranges.count", "Range count", base.DEC),
    range = ProtoField.bytes("udpxfer.range", "Range"),
    range_first = ProtoField.uint64("udpxfer.range.first", "First", base.DEC),
    range_last = ProtoField.uint64("udpxfer.range.last", "Last (inclusive)", base.DEC),

    -- DONE
    done_verdict = ProtoField.uint8("udpxfer.done.verdict", "Verdict", base.DEC, VERDICTS),

    -- ABORT
    abort_code = ProtoField.uint8("udpxfer.abort.code", "Code", base.DEC, ABORT_CODES),
    abort_reason_len = ProtoField.uint16("udpxfer.abort.reason_len", "Reason length", base.DEC),
    abort_reason = ProtoField.string("udpxfer.abort.reason", "Reason", base.UNICODE),

    -- HELLO
    hello_flags = ProtoField.uint8("udpxfer.hello.flags", "HELLO flags", base.HEX),
    hello_retry = ProtoField.bool("udpxfer.hello.flags.retry", "RETRY (echo the token in META)", 8, nil, 0x01),
    hello_accepted = ProtoField.bool("udpxfer.hello.flags.accepted", "ACCEPTED (the transfer is on)", 8, nil, 0x02),
    hello_resuming = ProtoField.bool("udpxfer.hello.flags.resuming", "RESUMING (chunks already on disk)", 8, nil, 0x04),
    hello_need_key = ProtoField.bool("udpxfer.hello.flags.need_key", "NEED_KEY (receiver takes keyed transfers only)", 8, nil, 0x08),
    hello_no_key = ProtoField.bool("udpxfer.hello.flags.no_key", "NO_KEY (receiver has no key)", 8, nil, 0x10),
    hello_auth_failed = ProtoField.bool("udpxfer.hello.flags.auth_failed", "AUTH_FAILED (a datagram failed authentication)", 8, nil, 0x20),

    -- MANIFEST
    manifest_block = ProtoField.uint64("udpxfer.manifest.block", "Block", base.DEC),
    manifest_hash = ProtoField.bytes("udpxfer.manifest.hash", "SHA-256"),
}
local field_list = {}
for _, field in pairs(f) do
    field_list[#field_list + 1] = field
end
udpx.fields = field_list

local e = {
    bad_check = ProtoExpert.new("udpxfer.check.bad", "Bad CRC-32: the datagram is corrupt",
        expert.group.CHECKSUM, expert.severity.ERROR),
    malformed = ProtoExpert.new("udpxfer.malformed", "Malformed udpxfer datagram",
        expert.group.MALFORMED, expert.severity.ERROR),
    gso = ProtoExpert.new("udpxfer.gso", "UDP GSO super-datagram (captured before segmentation)",
        expert.group.REASSEMBLE, expert.severity.CHAT),
}
udpx.experts = { e.bad_check, e.malformed, e.gso }

-- CRC-32 (zlib / IEEE 802.3, reflected, polynomial 0xEDB88320), table-driven. Lua 5.3+ has
-- integer bit operators; Lua 5.2 (Wireshark < 4.4) has bit32; older builds LuaBitOp's bit.
local crc32
if _VERSION == "Lua 5.3" or _VERSION == "Lua 5.4" then
    crc32 = load([[
        local tbl = {}
        for i = 0, 255 do
            local c = i
            for _ = 1, 8 do
                if c & 1 == 1 then c = 0xEDB88320 ~ (c >> 1) else c = c >> 1 end
            end
            tbl[i] = c
        end
        local byte = string.byte
        return function(s)
            local c = 0xFFFFFFFF
            for i = 1, #s do
                c = tbl[(c ~ byte(s, i)) & 0xFF] ~ (c >> 8)
            end
            return c ~ 0xFFFFFFFF
        end
    ]])()
else
    local bits = bit32 or bit
    local band, bxor, rshift = bits.band, bits.bxor, bits.rshift
    local tbl = {}
    for i = 0, 255 do
        local c = i
        for _ = 1, 8 do
            if band(c, 1) == 1 then c = bxor(0xEDB88320, rshift(c, 1)) else c = rshift(c, 1) end
        end
        tbl[i] = c
    end
    local byte = string.byte
    crc32 = function(s)
        local c = 0xFFFFFFFF
        for i = 1, #s do
            c = bxor(tbl[band(bxor(c, byte(s, i)), 0xFF)], rshift(c, 8))
        end
        c = bxor(c, 0xFFFFFFFF)
        if c < 0 then c = c + 4294967296 end -- LuaBitOp results are signed
        return c
    end
end

local function crc_good(tvb, len)
    local computed = crc32(tvb:range(0, len - CRC_BYTES):bytes():raw())
    return computed == tvb:range(len - CRC_BYTES, CRC_BYTES):uint(), computed
end

-- Helpers.
local function hello_flag_text(flags)
    local names = {}
    for _, pair in ipairs(HELLO_FLAG_NAMES) do
        local bitv, name = pair[1], pair[2]
        if math.floor(flags / bitv) % 2 == 1 then names[#names + 1] = name end
    end
    if #names == 0 then return "none" end
    return table.concat(names, " ")
end

local function has(flags, bitv)
    return math.floor(flags / bitv) % 2 == 1
end

local function mtime_text(ns)
    local secs = ns:tonumber() / 1e9
    if secs <= 0 or secs > 253402300799 then return "" end
    return " (" .. os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(secs)) .. ")"
end

local function bad(tree, item, text)
    (item or tree):add_proto_expert_info(e.malformed, text)
end

-- Expect a body of exactly `want` bytes; returns false (with an expert error) otherwise.
local function exact(tree, item, name, len, want)
    if len ~= want then
        bad(tree, item, string.format("%s body of %d bytes, expected %d", name, len, want))
        return false
    end
    return true
end

-- Bodies: each adds its fields to `tree` from `body` (a TvbRange-capable Tvb) and returns the
-- text for the Info column after the type name.

local function body_meta(body, tree, item, seq)
    local len = body:len()
    if len < META_BYTES then
        bad(tree, item, string.format("META body of %d bytes is shorter than %d", len, META_BYTES))
        return "copy " .. tostring(seq)
    end
    tree:add(f.meta_size, body(0, 8))
    tree:add(f.meta_chunk_size, body(8, 4))
    tree:add(f.meta_chunk_count, body(12, 8))
    tree:add(f.meta_block_chunks, body(20, 4))
    tree:add(f.sha256, body(24, 32))
    local mtime = body(56, 8):uint64()
    tree:add(f.meta_mtime_ns, body(56, 8)):append_text(mtime_text(mtime))
    local mode = body(64, 1):uint()
    local mode_item = tree:add(f.meta_mode, body(64, 1))
    if MODES[mode] == nil then bad(tree, mode_item, "unknown mode " .. mode) end
    tree:add(f.nonce, body(65, 16)):prepend_text("Sender ")
    tree:add(f.token, body(81, 16))
    local name_len = body(97, 2):uint()
    tree:add(f.meta_name_len, body(97, 2))
    local name = ""
    if exact(tree, item, "META", len, META_BYTES + name_len) and name_len > 0 then
        name = body(META_BYTES, name_len):string(ENC_UTF_8)
        tree:add(f.meta_name, body(META_BYTES, name_len), name)
    end
    local chunk_size = body(8, 4):uint()
    if chunk_size == 0 then bad(tree, item, "META chunk size 0") end
    return string.format("copy %s \"%s\" %s bytes, %s chunks of %d, %s", tostring(seq), name,
        tostring(body(0, 8):uint64()), tostring(body(12, 8):uint64()), chunk_size,
        MODES[mode] or "?")
end

local function body_end(body, tree, item, seq)
    if exact(tree, item, "END", body:len(), END_BYTES) then
        tree:add(f.chunks_sent, body(0, 8))
        tree:add(f.end_tx_sent, body(8, 8))
        return string.format("round %s: %s chunks, %s datagrams sent", tostring(seq),
            tostring(body(0, 8):uint64()), tostring(body(8, 8):uint64()))
    end
    return "round " .. tostring(seq)
end

local function body_status(body, tree, item)
    if not exact(tree, item, "STATUS", body:len(), STATUS_BYTES) then return "" end
    tree:add(f.echo_ns, body(0, 8))
    tree:add(f.status_highest, body(8, 8))
    tree:add(f.held, body(16, 8))
    tree:add(f.window, body(24, 4))
    tree:add(f.status_received, body(28, 8))
    tree:add(f.status_queued_ns, body(36, 4))
    return string.format("held %s, window %d, highest pn %s", tostring(body(16, 8):uint64()),
        body(24, 4):uint(), tostring(body(8, 8):int64()))
end

local function body_ranges(name, body, tree, item)
    local len = body:len()
    if len < RANGES_HEAD_BYTES then
        bad(tree, item, string.format("%s body of %d bytes is shorter than %d", name, len, RANGES_HEAD_BYTES))
        return ""
    end
    tree:add(f.echo_ns, body(0, 8))
    local kind = body(8, 1):uint()
    local kind_item = tree:add(f.ranges_kind, body(8, 1))
    if RANGE_KINDS[kind] == nil or (name == "HAVE" and kind ~= 0) then
        bad(tree, kind_item, string.format("%s range kind %d", name, kind))
    end
    local count = body(9, 2):uint()
    tree:add(f.ranges_count, body(9, 2))
    if not exact(tree, item, name, len, RANGES_HEAD_BYTES + count * RANGE_BYTES) then
        return string.format("%d ranges (truncated)", count)
    end
    local missing = 0
    for i = 0, count - 1 do
        local at = RANGES_HEAD_BYTES + i * RANGE_BYTES
        local first, last = body(at, 8):uint64(), body(at + 8, 8):uint64()
        local sub = tree:add(f.range, body(at, RANGE_BYTES))
        sub:set_text(string.format("Range %d: %s-%s", i, tostring(first), tostring(last)))
        sub:add(f.range_first, body(at, 8))
        sub:add(f.range_last, body(at + 8, 8))
        if first > last then
            bad(tree, sub, "range with first > last")
        else
            missing = missing + (last - first):tonumber() + 1
        end
    end
    local unit = kind == 1 and "blocks" or "chunks"
    return string.format("%d range%s, %d %s", count, count == 1 and "" or "s", missing, unit)
end

local function body_done(body, tree, item)
    if not exact(tree, item, "DONE", body:len(), DONE_BYTES) then return "" end
    tree:add(f.echo_ns, body(0, 8))
    local verdict = body(8, 1):uint()
    local verdict_item = tree:add(f.done_verdict, body(8, 1))
    if VERDICTS[verdict] == nil then bad(tree, verdict_item, "unknown verdict " .. verdict) end
    tree:add(f.held, body(9, 8))
    tree:add(f.sha256, body(17, 32)):prepend_text("Received ")
    return string.format("%s, %s chunks held", VERDICTS[verdict] or "?", tostring(body(9, 8):uint64()))
end

local function body_abort(body, tree, item)
    local len = body:len()
    if len < ABORT_BYTES then
        bad(tree, item, string.format("ABORT body of %d bytes is shorter than %d", len, ABORT_BYTES))
        return ""
    end
    local code = body(0, 1):uint()
    local code_item = tree:add(f.abort_code, body(0, 1))
    if ABORT_CODES[code] == nil then bad(tree, code_item, "unknown ABORT code " .. code) end
    tree:add(f.chunks_sent, body(1, 8))
    local reason_len = body(9, 2):uint()
    tree:add(f.abort_reason_len, body(9, 2))
    local reason = ""
    if exact(tree, item, "ABORT", len, ABORT_BYTES + reason_len) and reason_len > 0 then
        reason = body(ABORT_BYTES, reason_len):string(ENC_UTF_8)
        tree:add(f.abort_reason, body(ABORT_BYTES, reason_len), reason)
    end
    return string.format("%s: %s", ABORT_CODES[code] or "?", reason)
end

local function body_hello(body, tree, item)
    if not exact(tree, item, "HELLO", body:len(), HELLO_BYTES) then return "" end
    tree:add(f.echo_ns, body(0, 8))
    local flags = body(8, 1):uint()
    local text = hello_flag_text(flags)
    local flags_item = tree:add(f.hello_flags, body(8, 1)):append_text(" (" .. text .. ")")
    flags_item:add(f.hello_retry, body(8, 1))
    flags_item:add(f.hello_accepted, body(8, 1))
    flags_item:add(f.hello_resuming, body(8, 1))
    flags_item:add(f.hello_need_key, body(8, 1))
    flags_item:add(f.hello_no_key, body(8, 1))
    flags_item:add(f.hello_auth_failed, body(8, 1))
    if flags > KNOWN_HELLO_FLAGS then
        bad(tree, flags_item, string.format("unknown HELLO flags 0x%02x", flags))
    end
    tree:add(f.window, body(9, 4))
    tree:add(f.held, body(13, 8)):append_text(" (already verified on disk)")
    tree:add(f.token, body(21, 16))
    tree:add(f.nonce, body(37, 16)):prepend_text("Receiver ")
    if has(flags, 0x02) then
        return string.format("%s window %d", text, body(9, 4):uint())
    end
    return text
end

local function body_manifest(body, tree, item, seq)
    local len = body:len()
    local count = math.floor(len / SHA256_BYTES)
    if len % SHA256_BYTES ~= 0 or count < 1 or count > MANIFEST_HASHES then
        bad(tree, item, string.format("MANIFEST body of %d bytes (1 to %d SHA-256 digests)", len, MANIFEST_HASHES))
    end
    local first = seq:tonumber()
    for i = 0, count - 1 do
        local range = body(i * SHA256_BYTES, SHA256_BYTES)
        local sub = tree:add(f.manifest_hash, range)
        sub:prepend_text(string.format("Block %d ", first + i))
        sub:add(f.manifest_block, range, UInt64(first + i)):set_generated()
    end
    if count == 0 then return "no blocks" end
    return string.format("blocks %d-%d", first, first + count - 1)
end

-- One datagram in `tvb` (its own Tvb). Returns the Info text.
local function dissect_datagram(tvb, pinfo, tree)
    local len = tvb:len()
    local item = tree:add(udpx, tvb())
    if len < HEADER_BYTES + CRC_BYTES then
        bad(tree, item, string.format("datagram of %d bytes is shorter than header and check", len))
        return "truncated datagram"
    end
    item:add(f.magic, tvb(0, 4))
    local version = tvb(4, 1):uint()
    local version_item = item:add(f.version, tvb(4, 1))
    if version ~= VERSION then
        bad(item, version_item, "unsupported protocol version " .. version)
        return "version " .. version .. " (unsupported)"
    end
    local ptype = tvb(5, 1):uint()
    local type_name = TYPE_NAMES[ptype] or ("type " .. ptype)
    local type_item = item:add(f.type, tvb(5, 1))
    if TYPE_NAMES[ptype] == nil then bad(item, type_item, "unknown packet type " .. ptype) end

    local flags = tvb(6, 1):uint()
    local flags_item = item:add(f.flags, tvb(6, 1))
    flags_item:add(f.flag_resent, tvb(6, 1))
    flags_item:add(f.flag_ack, tvb(6, 1))
    flags_item:add(f.flag_keyed, tvb(6, 1))
    flags_item:add(f.flag_encrypted, tvb(6, 1))
    local keyed, encrypted = has(flags, F_KEYED), has(flags, F_ENCRYPTED)
    if flags > KNOWN_FLAGS then bad(item, flags_item, string.format("unknown flags 0x%02x", flags)) end
    if encrypted and not keyed then bad(item, flags_item, "ENCRYPTED without KEYED") end
    local pass_no = tvb(7, 1):uint()
    local pass_item = item:add(f.pass_no, tvb(7, 1))
    if ptype ~= DATA and (flags % 4 ~= 0 or pass_no ~= 0) then
        bad(item, pass_item, type_name .. " with data-only header fields set")
    end

    item:add(f.session, tvb(8, 8))
    local seq = tvb(16, 8):uint64()
    local seq_field = ({ [DATA] = f.chunk, [END] = f.round, [NACK] = f.round,
        [META] = f.copy, [MANIFEST] = f.first_block })[ptype]
    if seq_field ~= nil then
        item:add(seq_field, tvb(16, 8))
        item:add(f.seq, tvb(16, 8)):set_hidden()
    else
        item:add(f.seq, tvb(16, 8))
    end
    local pn = tvb(24, 8):uint64()
    item:add(f.pn, tvb(24, 8))
    item:add(f.sent_ns, tvb(32, 8))

    local trailer = keyed and TAG_BYTES or CRC_BYTES
    if len < HEADER_BYTES + trailer then
        bad(item, item, string.format("datagram of %d bytes is shorter than header and tag", len))
        return type_name .. " truncated"
    end
    local body_len = len - HEADER_BYTES - trailer
    local body = tvb(HEADER_BYTES, body_len):tvb()

    local info
    if encrypted then
        item:add(f.encrypted, tvb(HEADER_BYTES, body_len))
        if ptype == DATA then
            info = string.format("chunk %s pn %s", tostring(seq), tostring(pn))
        elseif seq_field ~= nil then
            info = string.format("%s %s", seq_field == f.round and "round" or "seq", tostring(seq))
        else
            info = ""
        end
        info = info .. string.format(" [encrypted, %d bytes]", body_len)
    else
        local body_item = item:add(f.body, tvb(HEADER_BYTES, body_len))
        body_item:set_text(string.format("%s body (%d bytes)", type_name, body_len))
        if ptype == DATA then
            body_item:add(f.data_len, tvb(HEADER_BYTES, body_len), body_len):set_generated()
            if body_len > 0 then body_item:add(f.data_payload, tvb(HEADER_BYTES, body_len)) end
            info = string.format("chunk %s pn %s", tostring(seq), tostring(pn))
        elseif ptype == META then
            info = body_meta(body, body_item, body_item, seq)
        elseif ptype == END then
            info = body_end(body, body_item, body_item, seq)
        elseif ptype == STATUS then
            info = body_status(body, body_item, body_item)
        elseif ptype == NACK then
            info = "round " .. tostring(seq) .. ": " .. body_ranges("NACK", body, body_item, body_item)
        elseif ptype == HAVE then
            info = body_ranges("HAVE", body, body_item, body_item)
        elseif ptype == DONE then
            info = body_done(body, body_item, body_item)
        elseif ptype == ABORT then
            info = body_abort(body, body_item, body_item)
        elseif ptype == HELLO then
            info = body_hello(body, body_item, body_item)
        elseif ptype == MANIFEST then
            info = body_manifest(body, body_item, body_item, seq)
        else
            info = ""
        end
    end
    if ptype == DATA then
        if has(flags, F_RESENT) then info = info .. string.format(" RESENT pass %d", pass_no) end
        if has(flags, F_ACK_REQUESTED) then info = info .. " ACK_REQ" end
    end

    local trailer_range = tvb(len - trailer, trailer)
    if keyed then
        item:add(f.tag, trailer_range):append_text(" (not verified: needs the key)")
        item:add(f.check_status, trailer_range, 2):set_generated()
    else
        local good, computed = crc_good(tvb, len)
        local check_item = item:add(f.check, trailer_range)
        if good then
            check_item:append_text(" [correct]")
            item:add(f.check_status, trailer_range, 1):set_generated()
        else
            check_item:append_text(string.format(" [incorrect, should be 0x%08x]", computed))
            item:add(f.check_status, trailer_range, 0):set_generated()
            check_item:add_proto_expert_info(e.bad_check)
            info = info .. " [BAD CRC]"
        end
    end
    item:append_text(string.format(", %s, session %s", type_name, tostring(tvb(8, 8):uint64():tohex())))
    if info == "" then return type_name end
    return type_name .. " " .. info
end

-- A UDP GSO super-datagram captured before the kernel cut it (loopback): equal-sized DATA
-- segments of one session back to back, the last possibly shorter. Returns the segment size,
-- or nil when `tvb` is one datagram.
local function gso_segment_bytes(tvb)
    local len = tvb:len()
    if len < 2 * (HEADER_BYTES + CRC_BYTES) or tvb(5, 1):uint() ~= DATA then return nil end
    local flags = tvb(6, 1):uint()
    if not has(flags, F_KEYED) and crc_good(tvb, len) then return nil end
    local raw = tvb:raw()
    local session = raw:sub(9, 16)
    local lead = MAGIC .. string.char(VERSION, DATA)
    local search_from = HEADER_BYTES + 1
    while true do
        local at = raw:find(lead, search_from + 1, true)
        if at == nil then return nil end
        local size = at - 1
        local ok = true
        for start = size, len - 1, size do
            if len - start < HEADER_BYTES + CRC_BYTES
                or raw:sub(start + 1, start + 6) ~= lead
                or raw:sub(start + 9, start + 16) ~= session then
                ok = false
                break
            end
        end
        if ok then return size end
        search_from = at
    end
end

function udpx.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    if len < 6 or tvb(0, 4):string() ~= MAGIC then return 0 end
    pinfo.cols.protocol = "UDPX"
    local size = gso_segment_bytes(tvb)
    if size == nil then
        pinfo.cols.info = dissect_datagram(tvb, pinfo, tree)
        return len
    end
    local count = math.ceil(len / size)
    local top = tree:add(udpx, tvb(), string.format(
        "udpxfer GSO super-datagram: %d segments of %d bytes", count, size))
    top:add(f.segments, tvb(), count):set_generated()
    top:add(f.segment_bytes, tvb(), size):set_generated()
    top:add_proto_expert_info(e.gso, string.format(
        "UDP GSO super-datagram: %d segments of %d bytes, cut by the kernel after capture", count, size))
    local first_info, last_info
    for i = 0, count - 1 do
        local start = i * size
        local seg_len = math.min(size, len - start)
        local info = dissect_datagram(tvb(start, seg_len):tvb(), pinfo, top)
        if i == 0 then first_info = info end
        last_info = info
    end
    pinfo.cols.info = string.format("%s ... %s (GSO: %d segments of %d bytes)", first_info,
        last_info:gsub("^DATA ", ""), count, size)
    return len
end

-- Registration: a UDP port (preference) and a heuristic for every other port.
udpx.prefs.port = Pref.uint("UDP port", 9000, "UDP port decoded as udpxfer (others are found by magic)")

local udp_table = DissectorTable.get("udp.port")
local registered_port = udpx.prefs.port
udp_table:add(registered_port, udpx)

function udpx.prefs_changed()
    if registered_port ~= udpx.prefs.port then
        if registered_port ~= 0 then udp_table:remove(registered_port, udpx) end
        registered_port = udpx.prefs.port
        if registered_port ~= 0 then udp_table:add(registered_port, udpx) end
    end
end

local function heuristic(tvb, pinfo, tree)
    if tvb:len() < HEADER_BYTES + CRC_BYTES then return false end
    if tvb(0, 4):string() ~= MAGIC or tvb(4, 1):uint() ~= VERSION then return false end
    local ptype = tvb(5, 1):uint()
    if TYPE_NAMES[ptype] == nil then return false end
    udpx.dissector(tvb, pinfo, tree)
    return true
end

udpx:register_heuristic("udp", heuristic)
