// Native Verilator harness of the whole accelerator (vitaccel.sim.native).
//
// The C++ side owns what the cocotb testbench does in Python: the DDR (an AXI4 slave on
// m_axi and a read-only one on every extra weight port m_axi_w1.., all on one memory), with
// seeded random pauses on every channel, and the host (an AXI4-Lite master on s_axil) that
// plays the driver's steps (vitaccel.compile.driver.protocol_steps) for any number of images
// in one process: the model is built and the memory image loaded once.
//
// The DDR channels copy cocotbext-axi's AxiRam timing (queues of two on every channel, the
// same per-edge order), so with pauses off the CYCLES register reads the same as under
// cocotb; test_sim_native checks it.
//
// Files (all little-endian), see vitaccel/sim/native/__init__.py:
//   --image F   the memory image, copied to DDR at --base
//   --steps F   "VTSTEPS1", u32 count, then per step: u8 kind, u64 a, u64 b [, b bytes]
//   --out DIR   reads.bin ("VTREADS1", u32 count, per read: u8 kind, u64 value-or-length
//               [, bytes]) and status.json, each written to a temporary name and renamed.
// Progress lines go to stderr: "progress <image> <images> <image cycles> <sim cycles> <wall s>".

#include <verilated.h>

#include <chrono>
#include <cinttypes>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "Vvitaccel_tb.h"

#ifndef WEIGHT_PORTS
#define WEIGHT_PORTS 1
#endif

namespace {

// Step kinds (vitaccel.sim.native.STEP_KINDS).
enum StepKind : uint8_t { WRITE_MEM = 0, WRITE_REG = 1, WAIT_DONE = 2, READ_REG = 3, READ_MEM = 4, RESET = 5 };

// Registers (vitaccel.isa.Reg) the harness reads itself when a run stops.
constexpr uint32_t REG_STATUS = 0x04, REG_PC = 0x20;
constexpr uint32_t STATUS_DONE = 2, STATUS_ERROR = 4;
constexpr unsigned BEAT = 16;  // 128-bit data bus
constexpr uint8_t RESP_OKAY = 0, RESP_SLVERR = 2;

struct Rng {  // splitmix64: one stream per channel, seeded from --seed
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    bool pause(double p) { return p > 0 && (next() >> 11) * (1.0 / 9007199254740992.0) < p; }
};

struct Memory {
    uint64_t base = 0;
    std::vector<uint8_t> bytes;
    bool in_range(uint64_t addr, uint64_t n) const {
        return addr >= base && addr - base + n <= bytes.size();
    }
};

struct Beat {
    uint32_t data[4];
    bool last;
    uint8_t resp;
};

// One AXI4 read slave: AR sink, R source, and the process between them (cocotbext-axi's
// AxiSlaveRead: queue limit 2 on both channels; per edge the sinks and sources first, then
// the process that moves requests into beats).
struct ReadPort {
    CData *arvalid, *arready, *arlen, *rvalid, *rready, *rlast, *rresp;
    QData *araddr;
    WData *rdata;
    // outputs as they were at the last edge, inputs sampled before it
    bool ar_ready = false, r_valid = false;
    bool s_arvalid = false, s_rready = false;
    uint64_t s_araddr = 0;
    unsigned s_arlen = 0;
    struct Req { uint64_t addr; unsigned beats; };
    std::deque<Req> arq;
    std::deque<Beat> rq;
    bool busy = false;
    Req cur{};
    unsigned beat = 0;
    Rng ar_rng{}, r_rng{};

    void sample() {
        s_arvalid = *arvalid;
        s_araddr = *araddr;
        s_arlen = *arlen;
        s_rready = *rready;
    }
    void reset() {
        arq.clear(); rq.clear(); busy = false;
        ar_ready = r_valid = false;
        drive();
    }
    void drive() {
        *arready = ar_ready;
        *rvalid = r_valid;
    }
    void edge(const Memory& mem, double pause) {
        bool pause_ar = ar_rng.pause(pause), pause_r = r_rng.pause(pause);
        if (s_arvalid && ar_ready) arq.push_back({s_araddr, s_arlen + 1});
        ar_ready = !(arq.size() >= 2 || pause_ar);
        if ((s_rready && r_valid) || !r_valid) {
            if (!rq.empty() && !pause_r) {
                const Beat& b = rq.front();
                for (int i = 0; i < 4; ++i) rdata[i] = b.data[i];
                *rlast = b.last;
                *rresp = b.resp;
                rq.pop_front();
                r_valid = true;
            } else {
                r_valid = false;
            }
        }
        for (;;) {
            if (!busy) {
                if (arq.empty()) break;
                cur = arq.front();
                arq.pop_front();
                busy = true;
                beat = 0;
            }
            if (rq.size() >= 2) break;
            uint64_t addr = (cur.addr & ~uint64_t(BEAT - 1)) + uint64_t(beat) * BEAT;
            Beat b{};
            if (mem.in_range(addr, BEAT)) {
                std::memcpy(b.data, &mem.bytes[addr - mem.base], BEAT);
                b.resp = RESP_OKAY;
            } else {
                b.resp = RESP_SLVERR;  // outside the DDR: the accelerator must stop with ERROR
            }
            b.last = ++beat == cur.beats;
            rq.push_back(b);
            if (b.last) busy = false;
        }
        drive();
    }
};

// The AXI4 write slave on m_axi (cocotbext-axi's AxiSlaveWrite: AW, W, B queues of two).
struct WritePort {
    CData *awvalid, *awready, *awlen, *wvalid, *wready, *wlast, *bvalid, *bready, *bresp;
    QData *awaddr;
    WData *wdata;
    SData *wstrb;
    bool aw_ready = false, w_ready = false, b_valid = false;
    bool s_awvalid = false, s_wvalid = false, s_bready = false;
    uint64_t s_awaddr = 0;
    unsigned s_awlen = 0;
    uint32_t s_wdata[4] = {0, 0, 0, 0};
    uint32_t s_wstrb = 0;
    struct Req { uint64_t addr; unsigned beats; };
    struct W { uint32_t data[4]; uint32_t strb; };
    std::deque<Req> awq;
    std::deque<W> wq;
    std::deque<uint8_t> bq;
    bool busy = false;
    Req cur{};
    unsigned beat = 0;
    uint8_t resp = RESP_OKAY;
    Rng aw_rng{}, w_rng{}, b_rng{};

    void sample() {
        s_awvalid = *awvalid;
        s_awaddr = *awaddr;
        s_awlen = *awlen;
        s_wvalid = *wvalid;
        for (int i = 0; i < 4; ++i) s_wdata[i] = wdata[i];
        s_wstrb = *wstrb;
        s_bready = *bready;
    }
    void reset() {
        awq.clear(); wq.clear(); bq.clear(); busy = false;
        aw_ready = w_ready = b_valid = false;
        drive();
    }
    void drive() {
        *awready = aw_ready;
        *wready = w_ready;
        *bvalid = b_valid;
    }
    void edge(Memory& mem, double pause) {
        bool pause_aw = aw_rng.pause(pause), pause_w = w_rng.pause(pause), pause_b = b_rng.pause(pause);
        if (s_awvalid && aw_ready) awq.push_back({s_awaddr, s_awlen + 1});
        aw_ready = !(awq.size() >= 2 || pause_aw);
        if (s_wvalid && w_ready) {
            W w{};
            std::memcpy(w.data, s_wdata, sizeof w.data);
            w.strb = s_wstrb;
            wq.push_back(w);
        }
        w_ready = !(wq.size() >= 2 || pause_w);
        if ((s_bready && b_valid) || !b_valid) {
            if (!bq.empty() && !pause_b) {
                *bresp = bq.front();
                bq.pop_front();
                b_valid = true;
            } else {
                b_valid = false;
            }
        }
        for (;;) {
            if (!busy) {
                if (awq.empty()) break;
                cur = awq.front();
                awq.pop_front();
                busy = true;
                beat = 0;
                resp = RESP_OKAY;
            }
            if (beat < cur.beats) {
                if (wq.empty()) break;
                W w = wq.front();
                wq.pop_front();
                uint64_t addr = (cur.addr & ~uint64_t(BEAT - 1)) + uint64_t(beat) * BEAT;
                if (mem.in_range(addr, BEAT)) {
                    const uint8_t* src = reinterpret_cast<const uint8_t*>(w.data);
                    for (unsigned i = 0; i < BEAT; ++i)
                        if (w.strb >> i & 1) mem.bytes[addr - mem.base + i] = src[i];
                } else {
                    resp = RESP_SLVERR;
                }
                ++beat;
                continue;
            }
            if (bq.size() >= 2) break;
            bq.push_back(resp);
            busy = false;
        }
        drive();
    }
};

struct Step {
    uint8_t kind;
    uint64_t a, b;
    std::vector<uint8_t> data;
};

struct Read {
    uint8_t kind;  // 0: register value, 1: bytes
    uint64_t value;
    std::vector<uint8_t> data;
};

[[noreturn]] void die(const char* fmt, const char* what) {
    std::fprintf(stderr, "vitaccel-native: ");
    std::fprintf(stderr, fmt, what);
    std::fprintf(stderr, "\n");
    std::exit(2);
}

std::vector<uint8_t> read_file(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) die("cannot open %s", path.c_str());
    std::vector<uint8_t> out;
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
    std::fclose(f);
    return out;
}

void write_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::string tmp = path + ".part";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) die("cannot write %s", tmp.c_str());
    if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())
        die("short write to %s", tmp.c_str());
    if (std::fclose(f) != 0) die("cannot close %s", tmp.c_str());
    if (std::rename(tmp.c_str(), path.c_str()) != 0) die("cannot rename %s", tmp.c_str());
}

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vvitaccel_tb> top;
    Memory mem;
    WritePort wr;
    ReadPort rd[WEIGHT_PORTS];
    double pause = 0.0;
    uint64_t sim_cycles = 0;
    // AXI4-Lite handshakes seen at the last edge
    bool s_awready = false, s_wready = false, s_bvalid = false, s_arready = false, s_rvalid = false;
    uint32_t s_rdata = 0;

    explicit Harness(int argc, char** argv) : ctx(new VerilatedContext) {
        ctx->commandArgs(argc, argv);
        top.reset(new Vvitaccel_tb{ctx.get()});
#define BIND_READ(P, pre)                                                                  \
    P.arvalid = &top->pre##_arvalid; P.arready = &top->pre##_arready;                      \
    P.araddr = &top->pre##_araddr; P.arlen = &top->pre##_arlen;                            \
    P.rvalid = &top->pre##_rvalid; P.rready = &top->pre##_rready;                          \
    P.rdata = top->pre##_rdata.data(); P.rlast = &top->pre##_rlast; P.rresp = &top->pre##_rresp;
        BIND_READ(rd[0], m_axi)
#if WEIGHT_PORTS > 1
        BIND_READ(rd[1], m_axi_w1)
#endif
#if WEIGHT_PORTS > 2
        BIND_READ(rd[2], m_axi_w2)
#endif
#if WEIGHT_PORTS > 3
        BIND_READ(rd[3], m_axi_w3)
#endif
#undef BIND_READ
        wr.awvalid = &top->m_axi_awvalid; wr.awready = &top->m_axi_awready;
        wr.awaddr = &top->m_axi_awaddr; wr.awlen = &top->m_axi_awlen;
        wr.wvalid = &top->m_axi_wvalid; wr.wready = &top->m_axi_wready;
        wr.wdata = top->m_axi_wdata.data(); wr.wstrb = &top->m_axi_wstrb;
        wr.wlast = &top->m_axi_wlast; wr.bvalid = &top->m_axi_bvalid;
        wr.bready = &top->m_axi_bready; wr.bresp = &top->m_axi_bresp;
        // the simulation wrapper's ID ports (one ID, in order)
        top->m_axi_bid = 0;
        top->m_axi_rid = 0;
#if WEIGHT_PORTS > 1
        top->m_axi_w1_rid = 0;
#endif
#if WEIGHT_PORTS > 2
        top->m_axi_w2_rid = 0;
#endif
#if WEIGHT_PORTS > 3
        top->m_axi_w3_rid = 0;
#endif
    }

    void seed(uint64_t s) {
        // channel k gets seed * 10 + k, as the cocotb testbench numbers them
        wr.aw_rng.s = s * 10 + 0; wr.w_rng.s = s * 10 + 1; wr.b_rng.s = s * 10 + 2;
        for (int q = 0; q < WEIGHT_PORTS; ++q) {
            rd[q].ar_rng.s = s * 10 + 3 + 2 * q;
            rd[q].r_rng.s = s * 10 + 4 + 2 * q;
        }
    }

    // One clock cycle: sample what the design drives before the rising edge, clock it,
    // then let the DDR models answer (their outputs reach the design at the next edge).
    void tick() {
        top->clk = 0;
        top->eval();
        wr.sample();
        for (auto& p : rd) p.sample();
        s_awready = top->s_axil_awready;
        s_wready = top->s_axil_wready;
        s_bvalid = top->s_axil_bvalid;
        s_arready = top->s_axil_arready;
        s_rvalid = top->s_axil_rvalid;
        s_rdata = top->s_axil_rdata;
        top->clk = 1;
        top->eval();
        ++sim_cycles;
        if (top->rst) return;
        wr.edge(mem, pause);
        for (auto& p : rd) p.edge(mem, pause);
    }

    void reset() {
        top->rst = 1;
        wr.reset();
        for (auto& p : rd) p.reset();
        top->s_axil_awvalid = top->s_axil_wvalid = top->s_axil_arvalid = 0;
        top->s_axil_bready = top->s_axil_rready = 0;
        for (int i = 0; i < 4; ++i) tick();
        top->rst = 0;
        for (int i = 0; i < 2; ++i) tick();
    }

    void write_reg(uint32_t addr, uint32_t value) {
        top->s_axil_awaddr = addr; top->s_axil_awvalid = 1;
        top->s_axil_wdata = value; top->s_axil_wstrb = 0xF; top->s_axil_wvalid = 1;
        top->s_axil_bready = 1;
        bool aw = false, w = false, b = false;
        while (!b) {
            bool aw_now = !aw, w_now = !w;
            tick();
            if (aw_now && s_awready) { aw = true; top->s_axil_awvalid = 0; }
            if (w_now && s_wready) { w = true; top->s_axil_wvalid = 0; }
            if (aw && w && s_bvalid) b = true;
        }
        top->s_axil_bready = 0;
    }

    uint32_t read_reg(uint32_t addr) {
        top->s_axil_araddr = addr; top->s_axil_arvalid = 1;
        do tick(); while (!s_arready);
        top->s_axil_arvalid = 0;
        top->s_axil_rready = 1;
        do tick(); while (!s_rvalid);
        top->s_axil_rready = 0;
        return s_rdata;
    }
};

struct Status {
    std::string state = "ok", message;
    uint64_t images_done = 0, image = 0, pc = 0, status_reg = 0, image_cycles = 0;
};

std::string status_json(const Status& st, const Harness& h, double wall_s) {
    // CPU seconds beside wall seconds: on a shared machine the wall clock says more about the
    // other processes than about the simulator.
    double cpu_s = double(std::clock()) / CLOCKS_PER_SEC;
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "{\"state\": \"%s\", \"message\": \"%s\", \"images_done\": %" PRIu64
                  ", \"image\": %" PRIu64 ", \"pc\": %" PRIu64 ", \"status_reg\": %" PRIu64
                  ", \"image_cycles\": %" PRIu64 ", \"sim_cycles\": %" PRIu64
                  ", \"wall_s\": %.6f, \"cpu_s\": %.6f, \"weight_ports\": %d}\n",
                  st.state.c_str(), st.message.c_str(), st.images_done, st.image, st.pc,
                  st.status_reg, st.image_cycles, h.sim_cycles, wall_s, cpu_s, WEIGHT_PORTS);
    return buf;
}

uint64_t get_u64(const std::vector<uint8_t>& buf, size_t& at) {
    if (at + 8 > buf.size()) die("%s", "truncated steps file");
    uint64_t v;
    std::memcpy(&v, &buf[at], 8);
    at += 8;
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    std::string image_path, steps_path, out_dir;
    uint64_t base = 0, mem_size = 0, timeout_cycles = 20000000;
    uint64_t seed = 0;
    double pause = 0.0, progress_s = 1.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string k = argv[i];
        const char* v = argv[i + 1];
        if (k == "--image") image_path = v;
        else if (k == "--steps") steps_path = v;
        else if (k == "--out") out_dir = v;
        else if (k == "--base") base = std::strtoull(v, nullptr, 0);
        else if (k == "--mem-size") mem_size = std::strtoull(v, nullptr, 0);
        else if (k == "--timeout-cycles") timeout_cycles = std::strtoull(v, nullptr, 0);
        else if (k == "--seed") seed = std::strtoull(v, nullptr, 0);
        else if (k == "--pause") pause = std::strtod(v, nullptr);
        else if (k == "--progress-s") progress_s = std::strtod(v, nullptr);
        else die("unknown option %s", k.c_str());
    }
    if (image_path.empty() || steps_path.empty() || out_dir.empty())
        die("%s", "usage: --image F --steps F --out DIR [--base A --mem-size N --pause P --seed S "
                  "--timeout-cycles N --progress-s S]");

    auto t0 = std::chrono::steady_clock::now();
    auto wall = [&] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    Harness h(argc, argv);
    h.pause = pause;
    h.seed(seed);
    std::vector<uint8_t> image = read_file(image_path);
    h.mem.base = base;
    h.mem.bytes.assign(std::max<uint64_t>(mem_size, image.size()), 0);

    std::vector<uint8_t> sb = read_file(steps_path);
    if (sb.size() < 12 || std::memcmp(sb.data(), "VTSTEPS1", 8) != 0) die("%s", "bad steps file");
    uint32_t count;
    std::memcpy(&count, &sb[8], 4);
    size_t at = 12;
    std::vector<Step> steps(count);
    uint64_t images = 0;
    for (auto& s : steps) {
        if (at >= sb.size()) die("%s", "truncated steps file");
        s.kind = sb[at++];
        s.a = get_u64(sb, at);
        s.b = get_u64(sb, at);
        if (s.kind == WRITE_MEM) {
            if (at + s.b > sb.size()) die("%s", "truncated steps file");
            s.data.assign(sb.begin() + at, sb.begin() + at + s.b);
            at += s.b;
        }
        if (s.kind == WAIT_DONE) ++images;
    }

    h.reset();
    std::memcpy(h.mem.bytes.data(), image.data(), image.size());
    std::vector<Read> reads;
    Status st;
    double next_report = progress_s;
    for (const auto& s : steps) {
        if (s.kind == WRITE_MEM) {
            if (s.a + s.data.size() > h.mem.bytes.size()) die("%s", "write_mem outside the DDR");
            std::memcpy(&h.mem.bytes[s.a], s.data.data(), s.data.size());
        } else if (s.kind == WRITE_REG) {
            h.write_reg(uint32_t(s.a), uint32_t(s.b));
        } else if (s.kind == WAIT_DONE) {
            uint64_t start = h.sim_cycles;
            bool timeout = false;
            while (!h.top->irq) {
                h.tick();
                uint64_t n = h.sim_cycles - start;
                if (n > timeout_cycles) { timeout = true; break; }
                if ((n & 0xFFFF) == 0 && wall() >= next_report) {
                    std::fprintf(stderr, "progress %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %.3f\n",
                                 st.images_done, images, n, h.sim_cycles, wall());
                    std::fflush(stderr);
                    next_report = wall() + progress_s;
                }
            }
            h.tick();
            st.image_cycles = h.sim_cycles - start;
            uint32_t status = h.read_reg(REG_STATUS);
            if (timeout || (status & STATUS_ERROR) || !(status & s.a)) {
                st.state = timeout ? "timeout" : "error";
                st.image = st.images_done;
                st.status_reg = status;
                st.pc = h.read_reg(REG_PC);
                st.message = timeout ? "cycle limit reached" : "STATUS.ERROR set";
                break;
            }
            ++st.images_done;
            std::fprintf(stderr, "progress %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %.3f\n",
                         st.images_done, images, st.image_cycles, h.sim_cycles, wall());
            std::fflush(stderr);
        } else if (s.kind == READ_REG) {
            reads.push_back({0, h.read_reg(uint32_t(s.a)), {}});
        } else if (s.kind == READ_MEM) {
            if (s.a + s.b > h.mem.bytes.size()) die("%s", "read_mem outside the DDR");
            reads.push_back({1, s.b, std::vector<uint8_t>(&h.mem.bytes[s.a], &h.mem.bytes[s.a] + s.b)});
        } else if (s.kind == RESET) {
            h.reset();
        } else {
            die("%s", "unknown step kind");
        }
    }

    std::vector<uint8_t> out(12);
    std::memcpy(out.data(), "VTREADS1", 8);
    uint32_t n = uint32_t(reads.size());
    std::memcpy(&out[8], &n, 4);
    for (const auto& r : reads) {
        out.push_back(r.kind);
        uint8_t v[8];
        std::memcpy(v, &r.value, 8);
        out.insert(out.end(), v, v + 8);
        out.insert(out.end(), r.data.begin(), r.data.end());
    }
    write_atomic(out_dir + "/reads.bin", out);
    std::string js = status_json(st, h, wall());
    write_atomic(out_dir + "/status.json", std::vector<uint8_t>(js.begin(), js.end()));
    h.top->final();
    return st.state == "ok" ? 0 : 3;
}
