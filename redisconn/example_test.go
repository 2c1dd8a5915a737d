package redisconn_test

import (
	"fmt"

	"github.com/llmq/llmq/redisconn"
)

func ExampleParse() {
	c, err := redisconn.Parse("redis+sentinel://:hunter2@10.0.0.1:26379?addr=10.0.0.2:26379&master_name=llmq")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c)
	fmt.Println(c.Redacted())
	// c.AsynqOpt() connects asynq (producer.New, asynq.NewServer);
	// c.NewClient() is the go-redis client for llmq's own keys.

	_, err = redisconn.Parse("redis+sentinel://:hunter2@10.0.0.1:26379")
	fmt.Println(err)
	// Output:
	// sentinel master=llmq sentinels=10.0.0.1:26379,10.0.0.2:26379 db=0 password=xxxxx
	// redis+sentinel://:xxxxx@10.0.0.1:26379?addr=10.0.0.2:26379&master_name=llmq&db=0
	// redis url: master_name: missing (redis+sentinel URLs need master_name=NAME)
}
