console.log("edge test");
