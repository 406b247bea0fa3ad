// DeviceMemory and VramTracker: accounting, peaks, budget rejection, release, moves, zero-init.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "core/device_memory.h"
#include "core/errors.h"
#include "test_util.h"

namespace kvinfer {
namespace {

class DeviceMemoryTest : public testing::TestWithParam<Device> {
 protected:
  void SetUp() override { KVINFER_SKIP_WITHOUT(GetParam()); }
  Device device() const { return GetParam(); }
};

TEST_P(DeviceMemoryTest, TracksBytesPerPurposeAndPeaks) {
  auto tracker = std::make_shared<VramTracker>();
  {
    DeviceMemory a(1000, device(), "weights", tracker);
    DeviceMemory b(3000, device(), "kv_cache", tracker);
    {
      DeviceMemory c(500, device(), "weights", tracker);
      auto r = tracker->report();
      EXPECT_EQ(r["weights"].bytes, 1500u);
      EXPECT_EQ(r["weights"].allocations, 2u);
      EXPECT_EQ(tracker->total_bytes(), 4500u);
    }
    auto r = tracker->report();
    EXPECT_EQ(r["weights"].bytes, 1000u);
    EXPECT_EQ(r["weights"].peak_bytes, 1500u);
    EXPECT_EQ(r["weights"].allocations, 1u);
    EXPECT_EQ(r["weights"].total_allocations, 2u);
    EXPECT_EQ(r["kv_cache"].bytes, 3000u);
    EXPECT_EQ(tracker->peak_bytes(), 4500u);
  }
  EXPECT_EQ(tracker->total_bytes(), 0u);  // released on destruction
  EXPECT_EQ(tracker->peak_bytes(), 4500u);
  EXPECT_EQ(tracker->report()["kv_cache"].allocations, 0u);
}

TEST_P(DeviceMemoryTest, AlignedAndZeroInitialised) {
  auto tracker = std::make_shared<VramTracker>();
  for (size_t bytes : {size_t{1}, size_t{4097}, size_t{3} << 20}) {
    DeviceMemory m(bytes, device(), "activations", tracker, /*zero=*/true);
    ASSERT_EQ(m.bytes(), bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data()) % DeviceMemory::kAlignment, 0u);
    std::vector<uint8_t> host(bytes, 0xAB);
    copy_bytes(host.data(), Device::cpu(), m.data(), m.device(), bytes);
    for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(host[i], 0) << "byte " << i << " of " << bytes;
  }
}

TEST_P(DeviceMemoryTest, BudgetRejectsBeforeAllocatingAndNamesEverything) {
  auto tracker = std::make_shared<VramTracker>(size_t{10000});
  DeviceMemory held(6000, device(), "weights", tracker);
  try {
    DeviceMemory too_much(5000, device(), "kv_cache", tracker);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("5,000 B"), std::string::npos) << msg;        // requested
    EXPECT_NE(msg.find("'kv_cache'"), std::string::npos) << msg;     // purpose
    EXPECT_NE(msg.find("weights 6,000 B"), std::string::npos) << msg; // in use per purpose
    EXPECT_NE(msg.find("budget of 10,000 B"), std::string::npos) << msg;
    EXPECT_EQ(e.requested(), 5000u);
    EXPECT_EQ(e.purpose(), "kv_cache");
  }
  EXPECT_EQ(tracker->total_bytes(), 6000u);  // nothing stayed counted
  EXPECT_EQ(tracker->report()["kv_cache"].bytes, 0u);
  DeviceMemory exactly(4000, device(), "kv_cache", tracker);  // up to the budget is fine
  EXPECT_EQ(tracker->total_bytes(), 10000u);
}

TEST_P(DeviceMemoryTest, MoveTransfersOwnershipOnce) {
  auto tracker = std::make_shared<VramTracker>();
  DeviceMemory a(2048, device(), "workspace", tracker);
  void* p = a.data();
  DeviceMemory b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(tracker->total_bytes(), 2048u);
  DeviceMemory c(100, device(), "workspace", tracker);
  c = std::move(b);  // c's own 100 B are released, b's 2048 B move over
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(tracker->total_bytes(), 2048u);
  EXPECT_EQ(tracker->report()["workspace"].allocations, 1u);
  c.reset();
  c.reset();  // idempotent
  EXPECT_EQ(tracker->total_bytes(), 0u);
}

TEST_P(DeviceMemoryTest, UsesDefaultTrackerWhenNoneGiven) {
  auto def = VramTracker::default_tracker();
  size_t before = def->total_bytes();
  {
    DeviceMemory m(777, device(), "default-test");
    EXPECT_EQ(def->total_bytes(), before + 777);
  }
  EXPECT_EQ(def->total_bytes(), before);
}

INSTANTIATE_TEST_SUITE_P(Devices, DeviceMemoryTest, testing::ValuesIn(test::all_devices()),
                         test::device_name);

TEST(VramTracker, ThreadSafeUnderContention) {
  auto tracker = std::make_shared<VramTracker>();
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        tracker->reserve("activations", 16, Device::cpu());
        tracker->release("activations", 16);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(tracker->total_bytes(), 0u);
  EXPECT_LE(tracker->peak_bytes(), 8u * 16u);
  EXPECT_EQ(tracker->report()["activations"].total_allocations, 16000u);
}

TEST(VramTracker, BudgetNeverOvershotByConcurrentReservations) {
  auto tracker = std::make_shared<VramTracker>(size_t{1000});
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      try {
        tracker->reserve("weights", 300, Device::cpu());
        granted++;
      } catch (const OutOfMemoryError&) {
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(granted.load(), 3);
  EXPECT_EQ(tracker->total_bytes(), 900u);
}

TEST(DeviceMemory, HostOutOfMemoryIsAnOutOfMemoryError) {
  auto tracker = std::make_shared<VramTracker>();
  // More than any address space can map: the failure is reported, not fatal.
  EXPECT_THROW(DeviceMemory(size_t{1} << 62, Device::cpu(), "weights", tracker), OutOfMemoryError);
  EXPECT_EQ(tracker->total_bytes(), 0u);
}

TEST(Device, ParsesAndRejects) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_THROW(Device::parse("gpu"), std::invalid_argument);
  EXPECT_THROW(Device::parse("cuda:x"), std::invalid_argument);
  EXPECT_THROW(Device::parse("cuda:99"), std::invalid_argument);
  EXPECT_EQ(Device::cuda(2).str(), "cuda:2");
}

}  // namespace
}  // namespace kvinfer
